"""Airflow plugin: the "Improvement reviews" and "Service quality" pages in Airflow's UI, served by its API server.

Airflow loads every module of the plugins folder in each of its processes; the package
``serviceloop/`` is excluded by ``.airflowignore``, and this module only names the app, which
``serviceloop.ui`` builds on its first request.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from serviceloop.ui import QUALITY_TITLE, TITLE, URL_PREFIX, ReviewsApp


class ServiceLoopReviewsPlugin(AirflowPlugin):
    name = "serviceloop_reviews"
    fastapi_apps = [{"app": ReviewsApp(), "url_prefix": URL_PREFIX, "name": TITLE}]
    external_views = [
        {
            "name": TITLE,
            "href": f"{URL_PREFIX.lstrip('/')}/reviews",
            "destination": "nav",
            "url_route": "improvement-reviews",
        },
        {
            "name": QUALITY_TITLE,
            "href": f"{URL_PREFIX.lstrip('/')}/quality",
            "destination": "nav",
            "url_route": "service-quality",
        },
    ]
