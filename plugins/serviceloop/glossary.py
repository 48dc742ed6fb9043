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
}

STAGES = {
    "1. demand identification": {"en": "1. demand identification", "zh": "1. 需求识别"},
    "2. task assignment": {"en": "2. task assignment", "zh": "2. 任务分派"},
    "3. collaborative execution": {"en": "3. collaborative execution", "zh": "3. 协同执行"},
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


def phrase(key: str, lang: str, **values) -> str:
    return PHRASES[key][language(lang)].format(**values)
