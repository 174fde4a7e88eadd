"""The Chinese support dialogues: customer_service.py's recall dialogues, phrased in simplified Chinese.

Same structure and rules as the English ones (a fact in the first turn, unrelated questions, the fact asked back;
every third template held out; made-up facts and the training-only pools in training only), built by
`customer_service.dialogues` with the `CHINESE` phrasebook. The shop quotes in yuan. E-mail addresses are the
pool's names romanised (pinyin without tones, surname first: 王芳 -> wang.fang@example.com); made-up ones are
syllables no pooled name uses.
"""

from __future__ import annotations

import random

from seekmoe.train.chat_data.customer_service import (
    EMAIL_DOMAINS,
    Phrasebook,
    fact_source,
    order_number,
)

SUPPORT_PROMPT_ZH = "你是Maple & Co.网店的客服助手。回答要简短、友好，并记住顾客告诉你的信息。"

# the pools, each with its romanisation for e-mail addresses
SURNAMES = {"王": "wang", "李": "li", "张": "zhang", "刘": "liu", "陈": "chen", "杨": "yang", "黄": "huang",
            "赵": "zhao", "吴": "wu", "周": "zhou", "徐": "xu", "孙": "sun", "马": "ma", "朱": "zhu", "胡": "hu",
            "郭": "guo", "何": "he", "林": "lin", "罗": "luo", "高": "gao"}
GIVEN_NAMES = {"伟": "wei", "芳": "fang", "娜": "na", "敏": "min", "静": "jing", "丽": "li", "强": "qiang",
               "磊": "lei", "洋": "yang", "艳": "yan", "子涵": "zihan", "浩然": "haoran", "欣怡": "xinyi",
               "宇轩": "yuxuan", "雨桐": "yutong", "思远": "siyuan", "佳怡": "jiayi", "俊杰": "junjie",
               "晓明": "xiaoming", "雪梅": "xuemei"}
CITIES_ZH = ["杭州", "成都", "苏州", "南京", "武汉", "西安", "重庆", "长沙", "厦门", "青岛", "大连", "昆明", "宁波",
             "合肥", "郑州", "济南", "福州", "沈阳", "天津", "无锡"]
# training dialogues only, as in English: made-up given names and towns can only be copied, never guessed. No
# character of a pooled given name or city, so a made-up fact is never a pooled one
GIVEN_CHARS = list("安博辰川德栋朵帆峰刚冠海航鸿华慧嘉建锦景军凯康乐琳玲龙露茂美楠鹏萍琪琴秋荣瑞珊诗舒淑松婷彤"
                   "希霞翔鑫星秀旭萱妍彦瑶颖勇友玉媛悦云泽哲振志智卓梓")
TOWN_CHARS = list("岚枫溪岭澜栖崇嵩汀沅湄峦柏樟榆杉漳淇涞洛沂郦邺鄞歙婺黔滇昭晋陇琼莒蓟筠翠璧")
TOWN_SUFFIXES = ["市", "县", "镇", ""]
# training only, as customer_service.TRAIN_CITIES: real cities and given names none of the pools holds
TRAIN_CITIES_ZH = [
    "广州", "深圳", "北京", "上海", "珠海", "佛山", "东莞", "温州", "绍兴", "嘉兴", "台州", "金华",
    "扬州", "常州", "南通", "徐州", "泉州", "漳州", "南昌", "九江", "赣州", "贵阳", "遵义", "南宁",
    "桂林", "柳州", "海口", "三亚", "兰州", "银川", "西宁", "拉萨", "太原", "大同", "石家庄", "保定",
    "唐山", "邯郸", "烟台", "威海", "潍坊", "淄博", "临沂", "洛阳", "开封", "南阳", "宜昌", "襄阳",
    "荆州", "岳阳", "株洲", "湘潭", "衡阳", "常德", "绵阳", "宜宾", "乐山", "泸州", "南充", "德阳",
    "汕头", "湛江", "惠州", "中山", "江门", "肇庆", "长春", "哈尔滨", "大庆", "鞍山", "抚顺", "锦州",
    "丹东", "营口", "芜湖", "蚌埠", "安庆", "黄山", "盐城", "镇江", "泰州", "连云港", "淮安", "湖州",
    "舟山", "丽水", "衢州", "景德镇", "上饶", "宁德", "莆田", "龙岩", "大理", "丽江", "曲靖", "玉溪",
    "秦皇岛", "呼和浩特", "包头"]
TRAIN_GIVEN_NAMES = {"建国": "jianguo", "婷婷": "tingting", "文博": "wenbo", "欣然": "xinran", "一鸣": "yiming",
                     "梦琪": "mengqi", "子轩": "zixuan", "诗涵": "shihan", "明轩": "mingxuan", "嘉豪": "jiahao",
                     "晨曦": "chenxi", "博文": "bowen", "淑华": "shuhua", "海燕": "haiyan", "秀兰": "xiulan",
                     "志明": "zhiming", "玉兰": "yulan", "天佑": "tianyou", "若曦": "ruoxi", "可馨": "kexin",
                     "思琪": "siqi", "桂英": "guiying", "军": "jun", "勇": "yong", "涛": "tao",
                     "超": "chao", "玲": "ling", "红": "hong", "斌": "bin", "鹏": "peng"}
EMAIL_SYLLABLES = ["bo", "cai", "dang", "feng", "geng", "kui", "lan", "mo", "nie", "pan", "qiu", "rong", "shen",
                   "tao", "wen", "xiong", "yue", "zeng", "bai", "cen", "duan", "fu", "gu", "kang", "lu", "meng",
                   "ning", "ou", "peng", "qin", "ruan", "song", "tian", "wan", "xia", "ye", "zuo", "deng"]

# {fact} is the fact; {ship} {ret} {open} {close} {free} {fee} {gift} come from the dialogue's shop (SHOP_ZH)
FIRST_TURNS_ZH = {
    "order_number": ["你好，我的订单号是{fact}。", "您好，我想咨询一下订单{fact}。", "我的订单号是{fact}。",
                     "关于我的订单有几个问题，单号是{fact}。", "你好！我是订单{fact}的买家，想问几个问题。",
                     "早上好，我想问一下{fact}这个订单。"],
    "name": ["您好，我叫{fact}，想咨询几个问题。", "你好，我是{fact}。", "你好，我叫{fact}，有几个问题想问。",
             "早上好，我是{fact}。", "您好！我的名字是{fact}。", "你好，预订人是{fact}。"],
    "email": ["你好，我的邮箱是{fact}。", "您好，我账户绑定的邮箱是{fact}。", "可以通过{fact}联系我。",
              "你好，我注册用的邮箱是{fact}。", "我的电子邮箱是{fact}，有几个问题想咨询。",
              "您好，我登录用的邮箱是{fact}。"],
    "city": ["你好，我住在{fact}。", "您好，我这边是{fact}。", "我在{fact}，有几个问题想问一下。",
             "你好，我的包裹都寄到{fact}。", "您好！我是{fact}的顾客。", "早上好，我人在{fact}。"],
}
# training only, as customer_service.EXTRA_FIRST_TURNS and EXTRA_FINAL_QUESTIONS
EXTRA_FIRST_TURNS_ZH = {
    "order_number": ["您好，订单{fact}想咨询一下。", "我下的单是{fact}，麻烦帮我看看。", "你好！订单编号{fact}。",
                     "关于订单{fact}，我想了解几件事。", "嗨，我是订单{fact}的顾客。", "单号{fact}，请问现在方便吗？"],
    "name": ["嗨，我是{fact}，请多关照。", "您好，鄙人{fact}。", "我的名字叫{fact}。", "你好，这边是{fact}。",
             "您好，下单的人是{fact}。", "哈喽，我叫{fact}。"],
    "email": ["我的联系邮箱：{fact}。", "有事请发邮件到{fact}。", "你好，我用{fact}注册的账号。",
              "您好，我的邮箱地址是{fact}。", "请记一下，邮箱{fact}。", "嗨，{fact}是我的邮箱。"],
    "city": ["你好，我家在{fact}。", "我住{fact}，想咨询一下。", "您好，我在{fact}生活。", "嗨，我这边位置是{fact}。",
             "我是从{fact}来咨询的。", "包裹请寄往{fact}，我有点事情想问。"],
}
EXTRA_FINAL_QUESTIONS_ZH = {
    "order_number": ["我的订单号你还记得吗？", "麻烦确认我给的单号。", "订单号是哪个来着？",
                     "你能告诉我我的订单编号吗？", "我问的是哪一单？", "请把我的订单号再念一次。"],
    "name": ["我叫什么名字？", "你记得我是谁吗？", "请确认我的姓名。", "我的名字你记下了吗？是什么？", "下单人叫什么？",
             "麻烦说说我的名字。"],
    "email": ["我的邮箱是什么？", "你记下的邮箱地址是哪个？", "请确认我留的邮箱。", "邮件会发到哪个地址？",
              "我留的邮箱是哪个？", "麻烦把我的邮箱再说一遍。"],
    "city": ["我住在哪个城市？", "你还记得我在哪吗？", "我所在的城市是哪里？", "请确认我的城市。", "我是哪里的顾客？",
             "包裹要寄到哪里？"],
}
ACKNOWLEDGEMENTS_ZH = ["好的，已记下。请问有什么可以帮您？", "您好！收到。请问需要什么帮助？",
                       "谢谢，请问您想了解什么？", "欢迎光临Maple & Co.！有什么可以帮您？"]
FINAL_QUESTIONS_ZH = {
    "order_number": ["我们刚才说的是哪个订单？", "能提醒我一下我给你的订单号吗？", "我刚才说的订单号是多少？",
                     "不好意思，我提到的是哪个订单号？", "提醒我一下，这是关于哪个订单的？",
                     "能再说一遍我的订单号吗？"],
    "name": ["预订人写的是什么名字？", "你还记得我叫什么吗？", "我刚才告诉你的名字是什么？",
             "你那边登记的我的名字是什么？", "不好意思，我刚才说我是谁来着？", "能重复一下我的名字吗？"],
    "email": ["我给你的是哪个邮箱？", "确认信会发到哪里？", "能重复一下我的邮箱吗？", "你那边记的我的邮箱是什么？",
              "收据会发到哪个邮箱？", "提醒我一下，我给的是哪个邮箱？"],
    "city": ["我说我在哪个城市？", "你还记得我住在哪里吗？", "我刚才说我在哪儿？", "包裹会寄到哪个城市？",
             "能提醒我一下我所在的城市吗？", "我提到的是哪个城市？"],
}
FINAL_ANSWERS_ZH = {
    "order_number": ["我们说的是订单{fact}。", "您的订单号是{fact}。"],
    "name": ["预订人是{fact}。", "您的名字是{fact}。"],
    "email": ["您给我的邮箱是{fact}。", "您提供的邮箱是{fact}。"],
    "city": ["您说您在{fact}。", "您告诉我您在{fact}。"],
}
# the same topics as customer_service.MIDDLE_TOPICS
MIDDLE_TOPICS_ZH = {
    "shipping_time": (["发货要多久？", "现在下单什么时候能到？", "一般几天能送到？", "你们正常的配送时间是多久？",
                       "你们发货快吗？", "如果我今天下单，什么时候能收到？"],
                      ["标准配送需要{ship}个工作日。", "订单通常在{ship}个工作日内送达。"]),
    "returns": (["你们的退货政策是什么？", "不合适的话可以退回吗？", "退货期限是多久？", "你们接受退货吗？",
                 "退货有截止时间吗？", "买了之后后悔了怎么办？"],
                ["收货后{ret}天内可以退货，全额退款。", "签收后{ret}天内退货免费。"]),
    "opening_hours": (["你们什么时候上班？", "你们的营业时间是什么？", "最晚几点可以打电话给你们？",
                       "客服热线什么时候能打通？", "客服几点下班？", "早上有人值班吗？"],
                      ["我们的客服周一至周五{open}:00到{close}:00在线。",
                       "工作日{open}:00至{close}:00都可以联系我们。"]),
    "payment": (["怎么付款？", "有哪些支付方式？", "可以刷卡吗？", "支持支付宝吗？", "你们接受哪些付款方式？",
                 "可以银行转账吗？"],
                ["我们支持银行卡、支付宝和银行转账。", "您可以用银行卡、支付宝或银行转账付款。"]),
    "shipping_cost": (["运费多少？", "包邮吗？", "配送要收费吗？", "我需要付运费吗？", "有运费吗？", "满多少包邮？"],
                      ["订单满{free}元包邮，否则运费{fee}元。", "运费{fee}元，订单满{free}元免运费。"]),
    "gift_wrap": (["你们有礼品包装吗？", "可以把订单包装成礼物吗？", "能提供礼品包装吗？", "能帮我包成礼物吗？",
                   "你们做礼品包装吗？", "可以帮我包装一下吗？"],
                  ["可以，任何订单都能礼品包装，收费{gift}元。", "礼品包装每单{gift}元。"]),
    "abroad": (["你们发国外吗？", "可以寄到其他国家吗？", "你们能把包裹寄到国外吗？", "支持国际配送吗？",
                "能寄到欧洲吗？", "我在国外可以下单吗？"],
               ["可以，我们寄往很多国家，时间会比国内多几天。", "我们支持国际配送，通常比国内慢几天。"]),
    "tracking": (["会给我物流链接吗？", "我怎么查看包裹动态？", "你们会发快递单号吗？", "可以追踪配送吗？",
                  "怎么知道我的包裹到哪了？", "有物流跟踪吗？"],
                 ["会的，包裹一出仓库就会通过邮件发给您物流链接。", "包裹发出后，我们会用邮件把物流链接发给您。"]),
    "thanks": (["谢谢，这很有帮助。", "太好了，谢谢！", "好的，知道了。", "完美，谢谢。", "好的，谢谢解释。",
                "不错，谢谢你。"],
               ["不客气！还有什么可以帮您的吗？", "很高兴能帮到您。还有其他问题吗？"]),
}
SHOP_ZH = {"ship": ["2到3", "3到5", "1到3"], "ret": [7, 15, 30], "open": [8, 9, 10], "close": [17, 18, 21],
           "free": [59, 99], "fee": ["6", "8", "10"], "gift": [5, 10]}


def make_fact_zh(rng: random.Random, kind: str, held_out: bool) -> str:
    if kind == "order_number":
        return order_number(rng)
    source = fact_source(rng, held_out)
    if kind == "city":
        if source == "invented":
            return "".join(rng.sample(TOWN_CHARS, 2)) + rng.choice(TOWN_SUFFIXES)
        return rng.choice(TRAIN_CITIES_ZH if source == "train_pool" else CITIES_ZH)
    given_names = TRAIN_GIVEN_NAMES if source == "train_pool" else GIVEN_NAMES
    if kind == "name":
        given = "".join(rng.sample(GIVEN_CHARS, rng.randint(1, 2))) if source == "invented" else rng.choice(
            list(given_names))
        return rng.choice(list(SURNAMES)) + given
    if source == "invented":
        local = rng.choice(EMAIL_SYLLABLES) + "." + "".join(rng.choices(EMAIL_SYLLABLES, k=rng.randint(1, 2)))
    else:
        local = SURNAMES[rng.choice(list(SURNAMES))] + "." + given_names[rng.choice(list(given_names))]
    return f"{local}@{rng.choice(EMAIL_DOMAINS)}"


CHINESE = Phrasebook(SUPPORT_PROMPT_ZH, FIRST_TURNS_ZH, ACKNOWLEDGEMENTS_ZH, MIDDLE_TOPICS_ZH, FINAL_QUESTIONS_ZH,
                     FINAL_ANSWERS_ZH, EXTRA_FIRST_TURNS_ZH, EXTRA_FINAL_QUESTIONS_ZH, SHOP_ZH, make_fact_zh, lang="zh")
