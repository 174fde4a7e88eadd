"""Answers to single support messages: a customer's message, as the intent router reads it, and the assistant's reply.

The intent set teaches the label of a message and the dialogues teach remembering; neither teaches what to say to
"Has order 47242 been shipped yet?", the README's first chat, so the bundled model answered it with whatever its
other data suggested. Here each intent has replies, in English and in Chinese, that name the order, product,
address or name the message gave (copying from context, as recall and tool arguments need), and ask for the order
number where it gave none. The messages are intent_message's, so the train and val sets split their phrasings as
the intent set does; the shop has no order data, so a reply never claims to know where a parcel is.
"""

from __future__ import annotations

import random
import string

from seekmoe.han import HAN
from seekmoe.train.chat_data import example
from seekmoe.train.chat_data.customer_service import INTENTS, SHOP, SUPPORT_PROMPT, intent_message
from seekmoe.train.chat_data.customer_service_zh import SHOP_ZH, SUPPORT_PROMPT_ZH

# intent -> replies; {order} {product} {address} {city} {name} are the message's slots (a reply is used only when
# the message holds each of its slots), {ship} {ret} figures of the shop. The last reply of each list needs no slot.
ANSWERS = {
    "order_status": [
        "Let me check order {order} for you. Orders leave our warehouse within one working day, and we e-mail you "
        "a tracking link as soon as yours has shipped.",
        "Thanks, I've looked up order {order}. The tracking link comes by e-mail the moment it ships, and delivery "
        "takes {ship} working days from then.",
        "Order {order} is with our warehouse team. If it has not arrived within {ship} working days of its "
        "shipping e-mail, write to us again and we'll chase the courier.",
        "Your {product} ships within one working day of your order, and delivery takes {ship} working days. The "
        "tracking link in your shipping e-mail shows where it is.",
        "Sorry for the wait! Could you give me your order number? Then I can check where your parcel is.",
    ],
    "refund": [
        "I'm sorry about that. I've started the refund of order {order}: the money goes back to your original payment "
        "method within 5 working days of us receiving the item.",
        "Refunds for order {order} are paid to the card or account you paid with, usually within 5 working days.",
        "Sorry the {product} didn't work out. Send it back within {ret} days and we refund the full price to your "
        "original payment method.",
        "You can return items within {ret} days for a full refund. Could you give me your order number, so I can "
        "start it for you?",
    ],
    "address_change": [
        "Done: I've asked our warehouse to send order {order} to {address}. If it has already shipped, the courier "
        "will forward it.",
        "I can change the address of order {order} as long as it hasn't shipped yet. What is the new address?",
        "Thanks, I've noted {address} as your new delivery address. Which order should go there?",
        "No problem. What is your full address in {city}, and which order is it for?",
        "Of course. Please send me the order number and the new address, and I'll update it.",
    ],
    "complaint": [
        "I'm very sorry about order {order}. Could you send us a photo? We'll replace the item or refund you, "
        "whichever you prefer.",
        "I'm sorry the {product} let you down. Please send us a photo and we'll replace it or refund you.",
        "I'm really sorry about that, and thank you for telling us. I've passed it on to our team, and we'll make "
        "it right.",
    ],
    "product_question": [
        "Good question about the {product}! Its product page lists the sizes, colours and materials; if yours "
        "isn't answered there, I'll ask our team for you.",
        "I'll find out about the {product} for you. Most details are on its product page, and our team answers "
        "anything it leaves out.",
        "Happy to help. Which product are you asking about?",
    ],
    "greeting": [
        "Hello {name}! Welcome to Maple & Co. How can I help you today?",
        "Hello! Welcome to Maple & Co. How can I help you today?",
        "Hi! What can I do for you?",
    ],
}
ANSWERS_ZH = {
    "order_status": [
        "我帮您查一下订单{order}。订单一般在一个工作日内发货，发货后我们会把物流链接发到您的邮箱。",
        "订单{order}已经交给仓库处理了。发货后{ship}个工作日内送达，如果到时还没收到，请再联系我们。",
        "您的{product}一般在下单后一个工作日内发出，送达需要{ship}个工作日，物流链接会发到您的邮箱。",
        "抱歉让您久等了！请告诉我订单号，我帮您查一下包裹到哪了。",
    ],
    "refund": [
        "很抱歉。订单{order}的退款已经记下了，我们收到退货后5个工作日内原路退回。",
        "很抱歉{product}没让您满意。{ret}天内寄回即可全额退款，钱会原路退回。",
        "收到退货后5个工作日内原路退款。请告诉我订单号，我来帮您办理。",
    ],
    "address_change": [
        "订单{order}还没发货的话可以改地址。请问新地址是什么？",
        "没问题。请把订单号和新地址发给我，我来帮您修改。",
    ],
    "complaint": [
        "订单{order}的事真的很抱歉。请发张照片给我们，我们可以换货或退款。",
        "很抱歉{product}让您失望了。请发张照片给我们，我们可以换货或退款。",
        "非常抱歉给您带来不好的体验。我已经把情况转给同事，我们一定会妥善处理。",
    ],
    "product_question": [
        "关于{product}，商品页面上有尺寸、颜色和材质的说明；如果没有您要的信息，我帮您问问同事。",
        "很乐意帮忙。请问您想了解哪件商品？",
    ],
    "greeting": [
        "{name}您好！欢迎光临Maple & Co.，请问有什么可以帮您？",
        "您好！欢迎光临Maple & Co.，请问有什么可以帮您？",
    ],
}
SYSTEM_SHARE = 0.5  # the rest without a system prompt, as the README's quick start and most clients send it


def slots_of(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name}


def answer(rng: random.Random, intent: str, text: str, filled: dict[str, str]) -> str:
    """A reply to text, in its language, naming what it can of the slots the message holds."""
    chinese = HAN.search(text) is not None
    replies = (ANSWERS_ZH if chinese else ANSWERS)[intent]
    shop = {slot: rng.choice(choices) for slot, choices in (SHOP_ZH if chinese else SHOP).items()}
    given = {slot for slot, value in filled.items() if value in text}
    if "address" in given:  # it holds the city: no asking for the address in a city the message already gave
        given.discard("city")
    # of the replies that name only what the message gave, those that name its order number, then the most of it
    named = [(("order" in used, len(used)), r) for r in replies if (used := slots_of(r) - set(shop)) <= given]
    best = max(rank for rank, _ in named)
    return rng.choice([r for rank, r in named if rank == best]).format(**filled, **shop)


def support_answers(n: int, rng: random.Random, held_out: bool) -> list[dict]:
    """n single-turn support chats, the intents in turn; held out: the intent set's held-out phrasings."""
    examples = []
    for k in range(n):
        intent = INTENTS[k % len(INTENTS)]
        template_id, text, filled = intent_message(rng, intent, held_out)
        chinese = HAN.search(text) is not None
        turns = [("user", text), ("assistant", answer(rng, intent, text, filled))]
        if rng.random() < SYSTEM_SHARE:
            turns.insert(0, ("system", SUPPORT_PROMPT_ZH if chinese else SUPPORT_PROMPT))
        meta = {"task": "support", "intent": intent, "template": template_id}
        for slot in ("order", "product"):
            if filled[slot] in text:
                meta[slot] = filled[slot]
        examples.append(example(turns, meta))
    return examples
