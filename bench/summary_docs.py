"""Held-out long documents for the summary benchmark, English and Chinese, and the summaries we wrote for them.

Each document is a report of about `chars` characters on one subject: a title, an introduction, sections of
background, method, measurements and discussion built from varied sentence templates (with figures of their own,
which are not the point), and one key conclusion, stated once, in words a writer would use ("Key conclusion:",
"In conclusion," "综上所述，", "关键结论：" ...), in the last section or, for some documents, in the introduction.
The reference summary says what the report is about and its key conclusion, as a person would summarise it.

Nothing here is used in training: the subjects, templates and seeds are this file's own.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

EN_SUBJECTS = [
    ("the mixture-of-experts architecture", "inference cost", "reduces", "our language-model service"),
    ("the new warehouse routing software", "delivery time", "cuts", "the northern distribution centre"),
    ("drip irrigation", "water use", "lowers", "the three test farms"),
    ("the four-day work week", "staff turnover", "reduces", "the support department"),
    ("rooftop solar panels", "grid electricity purchases", "cut", "the bus depots"),
    ("the redesigned onboarding flow", "support tickets from new users", "reduces", "the mobile app"),
    ("weight-only int8 quantization", "memory use", "lowers", "the serving cluster"),
    ("night-time bus routes", "late-shift commuting time", "shorten", "the eastern districts"),
    ("the heat-pump retrofit", "heating bills", "lowers", "the council's housing stock"),
    ("automated code review", "defects reaching production", "reduces", "the payments team"),
    ("the shared latent KV cache", "decode latency", "cuts", "long-context requests"),
    ("a cover crop rotation", "fertiliser spending", "reduces", "the cooperative's fields"),
]
ZH_SUBJECTS = [
    ("混合专家架构", "推理成本", "降低", "我们的语言模型服务"),
    ("新的仓储路径规划系统", "配送时间", "缩短", "北区配送中心"),
    ("滴灌技术", "用水量", "减少", "三个试验农场"),
    ("四天工作制", "员工流失率", "降低", "客服部门"),
    ("屋顶光伏板", "外购电量", "减少", "公交场站"),
    ("重新设计的新用户引导流程", "新用户工单数量", "减少", "移动应用"),
    ("权重int8量化", "显存占用", "降低", "推理集群"),
    ("夜间公交线路", "夜班通勤时间", "缩短", "东部城区"),
    ("热泵改造", "供暖费用", "降低", "市政住房"),
    ("自动化代码审查", "上线缺陷数量", "减少", "支付团队"),
    ("共享潜在KV缓存", "解码延迟", "缩短", "长上下文请求"),
    ("轮作覆盖作物", "化肥支出", "减少", "合作社的农田"),
]

EN_CONCLUSIONS = [
    "Key conclusion: {subject} {verb} {metric} by {value}% in {where}.",
    "In conclusion, {subject} {verb} {metric} by {value}% in {where}.",
    "The main finding of this report is that {subject} {verb} {metric} by {value}% in {where}.",
    "To conclude, across {where}, {subject} {verb} {metric} by {value}%.",
    "Our central result: in {where}, {subject} {verb} {metric} by {value}%.",
]
ZH_CONCLUSIONS = [
    "关键结论：{subject}可使{where}的{metric}{verb}{value}%。",
    "综上所述，{subject}使{where}的{metric}{verb}了{value}%。",
    "本报告的主要结论是，{subject}能将{where}的{metric}{verb}{value}%。",
    "总之，在{where}，{subject}让{metric}{verb}了{value}%。",
    "研究结论：{subject}将{where}的{metric}{verb}了{value}%。",
]

EN_SECTIONS = ["Background", "Method", "Measurements", "Discussion", "Limitations", "Operations", "Costs"]
ZH_SECTIONS = ["背景", "方法", "测量", "讨论", "局限", "运行情况", "成本"]

EN_FILLER = [
    "The team recorded {other} every {period} and kept the raw logs for later checks.",
    "During week {n}, {other} moved by {x}% while staffing stayed the same.",
    "Several people on the project noted that {other} depends on the season as much as on any change we made.",
    "We compared {n} sites that started from similar baselines and kept their schedules unchanged.",
    "The measurements were taken by two people independently, and they agreed to within {y}%.",
    "A pilot in month {n} showed problems with the data pipeline, which were fixed before the main study.",
    "Budgets for {other} were reviewed by the finance office, which asked for monthly summaries.",
    "Interviews with {n} staff members gave a mixed picture of how the change felt in daily work.",
    "The vendor supplied documentation, but much of the configuration had to be worked out on site.",
    "Weather, holidays and a short strike in month {n} all affected the figures for {other}.",
    "We excluded {n} days on which the sensors failed, which is about {y}% of the period.",
    "Earlier studies elsewhere reported changes in {other} between {y}% and {x}%, with wide uncertainty.",
    "The steering group met every {period} to look at the numbers and decide on the next steps.",
    "Training sessions were held for everyone involved, each lasting about {n} hours.",
    "Costs for maintenance rose slightly in the second half, mostly because of spare parts.",
    "Some of the older equipment had to be replaced, which delayed the start by {n} weeks.",
]
ZH_FILLER = [
    "团队每{period}记录一次{other}，原始日志全部保留以便复核。",
    "第{n}周，{other}变化了{x}%，而人员配置没有调整。",
    "项目组成员指出，{other}受季节影响的程度不亚于我们的任何改动。",
    "我们比较了{n}个起点相近的站点，它们的作息安排保持不变。",
    "测量由两人独立完成，两人的结果相差不到{y}%。",
    "第{n}个月的试点暴露了数据流程的问题，正式研究开始前已经修复。",
    "财务部门审核了{other}相关的预算，并要求每月提交汇总。",
    "对{n}名员工的访谈显示，大家对这项改变在日常工作中的感受不一。",
    "供应商提供了文档，但很多配置仍需在现场摸索。",
    "天气、节假日以及第{n}个月的短暂停工都影响了{other}的数据。",
    "我们剔除了传感器故障的{n}天，约占整个周期的{y}%。",
    "其他地方的早期研究报告{other}的变化在{y}%到{x}%之间，不确定性较大。",
    "指导小组每{period}开会一次，查看数据并决定下一步工作。",
    "所有参与人员都接受了培训，每次大约{n}小时。",
    "下半年维护费用略有上升，主要是因为备件。",
    "部分旧设备必须更换，导致启动推迟了{n}周。",
]
EN_OTHER = ["overtime hours", "sick days", "queue length", "spare-part orders", "customer ratings",
            "noise complaints", "fuel deliveries", "response time", "training attendance", "error reports"]
ZH_OTHER = ["加班时长", "病假天数", "排队长度", "备件订单", "客户评分", "噪音投诉", "燃料配送", "响应时间",
            "培训出勤", "错误报告"]
EN_PERIOD = ["week", "fortnight", "month"]
ZH_PERIOD = ["周", "两周", "月"]


@dataclass(frozen=True)
class Document:
    lang: str
    text: str
    conclusion: str  # the sentence that states it
    facts: tuple[str, ...]  # what a summary must carry to keep it: the figure and the measure
    reference: str  # the summary we wrote


def _paragraph(rng: random.Random, lang: str, sentences: int) -> str:
    filler, other, period = (EN_FILLER, EN_OTHER, EN_PERIOD) if lang == "en" else (ZH_FILLER, ZH_OTHER, ZH_PERIOD)
    out = []
    for _ in range(sentences):
        out.append(rng.choice(filler).format(other=rng.choice(other), period=rng.choice(period),
                                             n=rng.randint(2, 40), x=rng.randint(2, 60), y=rng.randint(1, 9)))
    return (" " if lang == "en" else "").join(out)


def document(seed: int, lang: str, chars: int = 100_000) -> Document:
    rng = random.Random(f"{lang}-{seed}")
    subject, metric, verb, where = rng.choice(EN_SUBJECTS if lang == "en" else ZH_SUBJECTS)
    value = rng.choice([12, 15, 18, 22, 25, 27, 30, 33, 35, 38, 40, 45])
    conclusion = rng.choice(EN_CONCLUSIONS if lang == "en" else ZH_CONCLUSIONS).format(
        subject=subject, metric=metric, verb=verb, value=value, where=where)
    if lang == "en":
        title = f"# The effect of {subject} on {metric} in {where}"
        intro = (f"This report describes a year-long study of {subject} in {where}. We set out to measure its "
                 f"effect on {metric}, alongside the other figures the teams track.")
        sections = EN_SECTIONS
    else:
        title = f"# {subject}对{where}{metric}的影响"
        intro = f"本报告介绍了在{where}为期一年的{subject}研究，目的是测量它对{metric}的影响，以及团队关注的其他指标。"
        sections = ZH_SECTIONS
    early = rng.random() < 0.25  # some writers state the conclusion up front
    parts = [title, intro + ((" " if lang == "en" else "") + conclusion if early else "")]
    body: list[str] = []
    i = 0
    while sum(len(p) for p in parts + body) < chars - 2_000:
        if i % 6 == 0:
            body.append(f"## {sections[(i // 6) % len(sections)]}")
        body.append(_paragraph(rng, lang, rng.randint(4, 8)))
        i += 1
    closing = "## Conclusion" if lang == "en" else "## 结论"
    wrap = ("The figures above come with the caveats listed in the limitations section." if lang == "en"
            else "以上数据附有局限部分所列的注意事项。")
    ending = [closing, wrap + (" " if lang == "en" else "") + conclusion] if not early else [closing, wrap]
    text = "\n\n".join(parts + body + ending)
    if lang == "en":
        reference = (f"A year-long study of {subject} in {where} and its effect on {metric}. "
                     f"{subject[0].upper() + subject[1:]} {verb} {metric} by {value}%.")
    else:
        reference = f"本报告研究了{where}的{subject}对{metric}的影响。结论：{subject}使{metric}{verb}了{value}%。"
    return Document(lang, text, conclusion, (f"{value}%", metric), reference)


def documents(n: int, chars: int = 100_000) -> list[Document]:
    """n held-out documents, half English and half Chinese."""
    return [document(i // 2, "en" if i % 2 == 0 else "zh", chars) for i in range(n)]


def keeps_conclusion(summary: str, doc: Document) -> bool:
    """The figure and the measure in one line or sentence of the summary (apart, they could come from anywhere:
    the title names the measure, other sentences carry other figures)."""
    pieces = [p for line in summary.splitlines() for p in re.split(r"(?<=[.!?。！？])\s*", line)]
    return any(all(f in p for f in doc.facts) for p in pieces)
