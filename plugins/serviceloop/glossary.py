"""Every word an alert shows a person, in each language a route can ask for.

KPI names, process stages, review statuses, delay causes and the phrases of a message live
here and nowhere else, so an alert in English and one in Simplified Chinese say the same
thing with the same names. A route sets its language in the teams reference data
(``language``: ``en`` or ``zh``); unknown codes fall back to English.
"""

from __future__ import annotations

LANGUAGES = ("en", "zh")

METRICS = {
    "resolution_time": {"en": "Resolution time", "zh": "解决时长"},
    "sla_breach": {"en": "SLA resolution breaches", "zh": "SLA 解决超时率"},
    "csat": {"en": "Customer satisfaction (CSAT)", "zh": "客户满意度 (CSAT)"},
    "first_response_time": {"en": "First response time", "zh": "首次响应时长"},
    "handoffs": {"en": "Handoffs per ticket", "zh": "每单转交次数"},
    "reopen": {"en": "Reopened tickets", "zh": "重开工单占比"},
}

STAGES = {
    "1. demand identification": {"en": "1. demand identification", "zh": "1. 需求识别"},
    "2. task assignment": {"en": "2. task assignment", "zh": "2. 任务分派"},
    "3. collaborative execution": {"en": "3. collaborative execution", "zh": "3. 协同执行"},
    "3. collaborative execution (waiting on the customer)": {
        "en": "3. collaborative execution (waiting on the customer)",
        "zh": "3. 协同执行（等待客户）",
    },
    "3. collaborative execution (waiting on a third party)": {
        "en": "3. collaborative execution (waiting on a third party)",
        "zh": "3. 协同执行（等待第三方）",
    },
    "4. result evaluation": {"en": "4. result evaluation", "zh": "4. 结果评估"},
    "5. continuous improvement": {"en": "5. continuous improvement", "zh": "5. 持续改进"},
}

STATUSES = {
    "open": {"en": "open", "zh": "待处理"},
    "acknowledged": {"en": "acknowledged", "zh": "已确认"},
    "action_planned": {"en": "action planned", "zh": "已制定措施"},
    "implemented": {"en": "implemented", "zh": "已实施"},
    "verified": {"en": "verified", "zh": "已验证"},
    "dismissed": {"en": "dismissed", "zh": "已驳回"},
}

DELAY_CAUSES = {
    "staffing_shortage": {"en": "staffing shortage", "zh": "人手不足"},
    "technical_fault": {"en": "technical fault", "zh": "技术故障"},
    "internal_communication": {"en": "internal communication", "zh": "内部沟通"},
    "process_design": {"en": "process design", "zh": "流程设计"},
    "customer_change": {"en": "customer change", "zh": "客户变更"},
    "third_party": {"en": "third party", "zh": "第三方"},
    "regulatory_change": {"en": "regulatory change", "zh": "法规变更"},
    "emergency_event": {"en": "emergency event", "zh": "突发事件"},
}

# The KPIs the weekly report and the dashboard show (columns of the kpi_* marts).
KPIS = {
    "sla_resolution_compliance": {"en": "SLA resolution compliance", "zh": "SLA 解决达标率"},
    "sla_first_response_compliance": {"en": "SLA first-response compliance", "zh": "SLA 首次响应达标率"},
    "resolution_p50_hours": {"en": "Resolution time, median", "zh": "解决时长（中位数）"},
    "resolution_p90_hours": {"en": "Resolution time, p90", "zh": "解决时长（P90）"},
    "first_contact_resolution_rate": {"en": "First-contact resolution", "zh": "首次接触解决率"},
    "reopen_rate": {"en": "Reopen rate", "zh": "重开率"},
    "csat_satisfied_rate": {"en": "Satisfied customers (CSAT 4-5)", "zh": "满意客户占比（CSAT 4-5）"},
    "complaint_rate": {"en": "Complaint rate", "zh": "投诉率"},
    "tickets_resolved": {"en": "Tickets resolved", "zh": "已解决工单"},
    "backlog_open": {"en": "Open backlog", "zh": "未结工单"},
}

# The steps of a ticket's cycle (fct_ticket_stages.stage), each inside a process stage.
CYCLE_STEPS = {
    "intake": {"en": "intake", "zh": "受理"},
    "assignment": {"en": "assignment", "zh": "分派"},
    "active_work": {"en": "active work", "zh": "处理中"},
    "waiting_customer": {"en": "waiting on the customer", "zh": "等待客户"},
    "waiting_third_party": {"en": "waiting on a third party", "zh": "等待第三方"},
    "evaluation": {"en": "evaluation", "zh": "评估"},
}
# fct_ticket_stages.process_stage -> the five-stage process (STAGES).
PROCESS_STAGES = {
    "intake": "1. demand identification",
    "assignment": "2. task assignment",
    "execution": "3. collaborative execution",
    "evaluation": "4. result evaluation",
}

RAG = {
    "green": {"en": "on target", "zh": "达标"},
    "amber": {"en": "near target", "zh": "接近目标"},
    "red": {"en": "off target", "zh": "未达标"},
}

PHRASES = {
    "subject.opened": {
        "en": "[ServiceLoop] {metric} worse for {team} since {since}",
        "zh": "[ServiceLoop] {team} 的{metric}自 {since} 起变差",
    },
    "subject.reminder": {
        "en": "[ServiceLoop] Reminder: review {review_id} is overdue ({metric}, {team})",
        "zh": "[ServiceLoop] 提醒：改进评审 {review_id} 已逾期（{metric}，{team}）",
    },
    "subject.escalation": {
        "en": "[ServiceLoop] Escalation: review {review_id} is still overdue ({metric}, {team})",
        "zh": "[ServiceLoop] 升级：改进评审 {review_id} 仍然逾期（{metric}，{team}）",
    },
    "subject.verified": {
        "en": "[ServiceLoop] Verified: {metric} for {team} is back within tolerance",
        "zh": "[ServiceLoop] 已验证：{team} 的{metric}已恢复到容差范围内",
    },
    "subject.failure": {
        "en": "[ServiceLoop] Task failed: {dag_id}.{task_id}",
        "zh": "[ServiceLoop] 任务失败：{dag_id}.{task_id}",
    },
    "subject.delivery_failed": {
        "en": "[ServiceLoop] Alert delivery failed: {alert_key}",
        "zh": "[ServiceLoop] 告警发送失败：{alert_key}",
    },
    "greeting": {"en": "Hello {name},", "zh": "{name}，您好："},
    "intro.opened": {
        "en": "ServiceLoop found a lasting change for the worse and opened an improvement review for you.",
        "zh": "ServiceLoop 发现了一项持续的恶化，并为您创建了一项改进评审。",
    },
    "intro.reminder": {
        "en": "This improvement review passed its due date without an action plan.",
        "zh": "该改进评审已过截止日期，尚未制定改进措施。",
    },
    "intro.escalation": {
        "en": "This improvement review is past its second deadline; it is escalated to you as {owner}'s escalation contact.",
        "zh": "该改进评审已超过第二截止日期，作为 {owner} 的升级联系人，现升级给您处理。",
    },
    "intro.verified": {
        "en": "The change made for this review has been measured: the metric is back within tolerance.",
        "zh": "已对该评审的改进措施进行效果测量：指标已恢复到容差范围内。",
    },
    "what": {"en": "What moved", "zh": "变化指标"},
    "how_much": {"en": "By how much", "zh": "变化幅度"},
    "where": {"en": "Where", "zh": "位置"},
    "stage": {"en": "stage", "zh": "阶段"},
    "since": {"en": "Since", "zh": "开始时间"},
    "since_detail": {
        "en": "{since} (detected on {detected}; last 7 days against the 4 weeks before)",
        "zh": "{since}（于 {detected} 检出；最近 7 天对比之前 4 周）",
    },
    "severity": {"en": "Severity", "zh": "严重程度"},
    "severity.high": {"en": "high", "zh": "高"},
    "severity.medium": {"en": "medium", "zh": "中"},
    "causes": {"en": "Top delay causes", "zh": "主要延误原因"},
    "no_causes": {"en": "none recorded", "zh": "无记录"},
    "review": {"en": "Review", "zh": "评审"},
    "review_detail": {"en": "{review_id}, {status}, due {due}", "zh": "{review_id}，{status}，截止 {due}"},
    "report": {"en": "Report", "zh": "报告"},
    "no_report": {"en": "(no report)", "zh": "（无报告）"},
    "effect": {"en": "Effect", "zh": "改进效果"},
    "effect_detail": {
        "en": "{post} in the {days} days after the change (old baseline {baseline}, during the drift {drift}); "
        "against the drift {vs_drift} (95% CI {low} to {high})",
        "zh": "改进后 {days} 天为 {post}（原基线 {baseline}，漂移期间 {drift}）；"
        "相对漂移期间 {vs_drift}（95% 置信区间 {low} 至 {high}）",
    },
    "why": {
        "en": "The change is statistically real (Evidently, {test} test), larger than the minimum that "
        "matters ({minimum}) and based on enough tickets on both sides.",
        "zh": "该变化在统计上显著（Evidently，{test} 检验），超过了有实际意义的最小幅度（{minimum}），"
        "且两侧工单数量充足。",
    },
    "act": {"en": "How to act", "zh": "如何处理"},
    "chart": {"en": "Chart", "zh": "趋势图"},
    "chart.reference": {"en": "reference (4 weeks)", "zh": "参考期（4 周）"},
    "chart.current": {"en": "current (7 days)", "zh": "当前期（7 天）"},
    "chart.after": {"en": "after the change", "zh": "改进后"},
    "chart.daily": {"en": "daily value", "zh": "每日数值"},
    "signature": {"en": "-- ServiceLoop", "zh": "-- ServiceLoop"},
    "failure.task": {"en": "Task", "zh": "任务"},
    "failure.error": {"en": "Error", "zh": "错误"},
    "failure.log": {"en": "Log", "zh": "日志"},
    "failure.run": {"en": "Run", "zh": "运行"},
    "subject.weekly_report": {
        "en": "[ServiceLoop] Service quality report, {segment}, week of {week}",
        "zh": "[ServiceLoop] 服务质量周报：{segment}，{week} 当周",
    },
    "report.title": {"en": "Service quality report", "zh": "服务质量周报"},
    "report.week": {"en": "Week {start} to {end}", "zh": "{start} 至 {end} 当周"},
    "report.intro": {
        "en": "The week from {start} to {end}: figures from the KPI marts, targets from kpi_targets.",
        "zh": "{start} 至 {end} 当周：数据来自 KPI 数据集市，目标来自 kpi_targets。",
    },
    "report.organisation": {"en": "the whole organisation", "zh": "全组织"},
    "report.scorecard": {"en": "Scorecard", "zh": "计分卡"},
    "report.kpi": {"en": "KPI", "zh": "指标"},
    "report.priority": {"en": "priority", "zh": "优先级"},
    "report.actual": {"en": "actual", "zh": "实际"},
    "report.target": {"en": "target", "zh": "目标"},
    "report.status": {"en": "status", "zh": "状态"},
    "report.no_data": {"en": "no data", "zh": "无数据"},
    "report.trends": {"en": "Trends over the last 13 weeks", "zh": "最近 13 周趋势"},
    "report.bottleneck": {"en": "Bottleneck of the week", "zh": "本周瓶颈"},
    "report.bottleneck_detail": {
        "en": "{step} ({stage}): {share} of the cycle time of the tickets closed this week",
        "zh": "{step}（{stage}）：占本周结案工单周期时长的 {share}",
    },
    "report.step": {"en": "step", "zh": "环节"},
    "report.stage": {"en": "process stage", "zh": "流程阶段"},
    "report.share": {"en": "share of cycle time", "zh": "周期时长占比"},
    "report.mean_hours": {"en": "mean hours", "zh": "平均小时数"},
    "report.causes": {"en": "Top delay causes of SLA breaches ({month})", "zh": "SLA 超时的主要延误原因（{month}）"},
    "report.cause": {"en": "cause", "zh": "原因"},
    "report.breaches": {"en": "breaches", "zh": "超时数"},
    "report.breach_share": {"en": "share of breaches", "zh": "超时占比"},
    "report.findings": {"en": "Drift findings of the week", "zh": "本周漂移发现"},
    "report.day": {"en": "day", "zh": "日期"},
    "report.team": {"en": "team", "zh": "团队"},
    "report.metric": {"en": "metric", "zh": "指标"},
    "report.change": {"en": "change", "zh": "变化"},
    "report.reviews": {"en": "Open improvement reviews", "zh": "未关闭的改进评审"},
    "report.status_now": {"en": "status today", "zh": "当前状态"},
    "report.age": {"en": "age", "zh": "已开启"},
    "report.days": {"en": "{days} d", "zh": "{days} 天"},
    "report.due": {"en": "due", "zh": "截止"},
    "report.none": {"en": "None.", "zh": "无。"},
    "report.attached": {
        "en": "The report is attached as a standalone HTML file.",
        "zh": "完整报告以独立 HTML 文件附上。",
    },
}

ACTIONS = (
    ("serviceloop reviews show {review_id}", {"en": "see the evidence and history", "zh": "查看证据与历史"}),
    ("serviceloop reviews ack {review_id} --note '...'", {"en": "acknowledge it", "zh": "确认"}),
    ("serviceloop reviews plan {review_id} --note '...'", {"en": "record the action planned", "zh": "记录改进措施"}),
    (
        "serviceloop reviews implemented {review_id} --on YYYY-MM-DD --note '...'",
        {"en": "record when the change took effect", "zh": "记录改进生效日期"},
    ),
    (
        "serviceloop reviews dismiss {review_id} --reason '...'",
        {"en": "a false alarm: dismiss it with the reason", "zh": "误报：填写原因后驳回"},
    ),
)


def language(code: str | None) -> str:
    code = (code or "en").strip().lower()
    return code if code in LANGUAGES else "en"


def _pick(table: dict, key: str, lang: str) -> str:
    entry = table.get(key)
    return entry[language(lang)] if entry else key


def metric(name: str, lang: str) -> str:
    return _pick(METRICS, name, lang)


def stage(name: str, lang: str) -> str:
    return _pick(STAGES, name, lang)


def status(name: str, lang: str) -> str:
    return _pick(STATUSES, name, lang)


def cause(name: str, lang: str) -> str:
    return _pick(DELAY_CAUSES, name, lang)


def kpi(name: str, lang: str) -> str:
    return _pick(KPIS, name, lang)


def cycle_step(name: str, lang: str) -> str:
    return _pick(CYCLE_STEPS, name, lang)


def rag(status: str | None, lang: str) -> str:
    return _pick(RAG, status, lang) if status else phrase("report.no_data", lang)


def phrase(key: str, lang: str, **values) -> str:
    return PHRASES[key][language(lang)].format(**values)
