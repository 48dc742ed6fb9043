"""``airflow`` for one short command, ending the way Airflow's own task processes end.

``airflow dags test`` runs a whole DAG run in one process that has imported Airflow, Great
Expectations, pandas, Evidently and dbt's adapters; when the command returns, the
interpreter's teardown (a final garbage collection over that heap, then every module) takes
seconds more: about 10 s per DAG measured on a loaded 2-core machine, against 0.1 s here.
Airflow's task processes skip it by ending with ``os._exit`` once their work is recorded;
this entry point does the same after the command has returned, its logs flushed. The exit
code is the command's (``DagRun failed`` exits 1, as with ``airflow``); an exception that
escapes the command ends the ordinary way, with its traceback. Long-running components
(scheduler, API server) are started as ``airflow``.
"""

from __future__ import annotations

import logging
import os
import sys


def main() -> None:
    from airflow.__main__ import main as airflow_main

    code = 0
    try:
        airflow_main()
    except SystemExit as exc:
        # As the interpreter reads it: None is success, a message (`DagRun failed`) is printed
        # and fails.
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
