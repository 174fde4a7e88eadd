"""A shop's customer-service assistant, generated: intent routing and multi-turn dialogues that test recall.

Every phrasing template has an id, and a fixed third of each list (every index i with i % 3 == 2) is held
out: val examples use only those, train examples never do. So the val set measures whether the model learned
the task, not whether it memorised our sentences. The split does not depend on the seed, so evaluations of
runs with different seeds stay comparable.

A dialogue's first user turn states a fact (an order number, a name, an e-mail address or a city); the middle
turns are ordinary support talk; the last asks for the fact back, and the assistant's last answer repeats it
verbatim. The acknowledgement of the first turn does not repeat the fact, so the model must reach back to it.
"""

from __future__ import annotations

import random

from seekmoe.train.chat_data import example

INTENTS = ("order_status", "refund", "address_change", "complaint", "product_question", "greeting")
INTENT_PROMPT = ("You are a shop's support router. Reply with exactly one label: order_status, refund, "
                 "address_change, complaint, product_question, greeting.")
SUPPORT_PROMPT = ("You are the support assistant of Maple & Co., an online shop. Answer briefly and kindly, "
                  "and remember what the customer tells you.")

FIRST_NAMES = ["Anna", "Wei", "Lucas", "Priya", "Tom", "Sofia", "Kenji", "Maria", "Omar", "Emma", "Liam", "Chloe",
               "Jonas", "Aisha", "Mateo", "Nina", "Ravi", "Elena", "Felix", "Hana"]
LAST_NAMES = ["Schmidt", "Zhang", "Martin", "Patel", "Becker", "Rossi", "Sato", "Garcia", "Haddad", "Jones",
              "Murphy", "Dubois", "Novak", "Khan", "Silva", "Berg", "Kumar", "Ivanova", "Weber", "Kim"]
CITIES = ["Lyon", "Leeds", "Hamburg", "Porto", "Utrecht", "Seville", "Krakow", "Bristol", "Turin", "Ghent", "Graz",
          "Malmo", "Bergen", "Cork", "Brno", "Lille", "Bremen", "Bologna", "Aarhus", "Basel"]
STREETS = ["Elm Street", "Station Road", "Mill Lane", "Park Avenue", "Church Street", "High Street", "Rose Lane",
           "Bridge Road", "Oak Way", "Market Square"]
PRODUCTS = ["backpack", "desk lamp", "coffee mug", "rain jacket", "water bottle", "wool scarf", "phone case",
            "toy train", "yoga mat", "kettle", "umbrella", "wall clock", "laptop sleeve", "teapot", "bike light"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
EMAIL_DOMAINS = ["example.com", "example.org", "example.net"]  # reserved for examples: never a real inbox
# training dialogues only: names and towns made up from syllables. Twenty cities can be guessed without looking
# back, and a small model learns to guess; a made-up town can only be copied from the first turn, which is the skill
# the held-out dialogues (real pools, unseen phrasings) measure.
SYLLABLES = ["ka", "lo", "ren", "mi", "ta", "vo", "sel", "dru", "an", "bek", "fi", "gar", "hul", "is", "jo", "kem",
             "lin", "mar", "nor", "ol", "pra", "quin", "ros", "sun", "tor", "ul", "ves", "wen", "xa", "yor", "zel"]
TOWN_ENDINGS = ["", "burg", "ton", "vik", "ora", "heim", "field", "stad", "mouth", "ville"]
INVENTED_SHARE = 0.5

# slots: {order} {product} {city} {address} {name} {date}
INTENT_TEMPLATES = {
    "order_status": [
        "Where is my order {order}?",
        "Hi, I ordered a {product} on {date} and it still hasn't arrived. Order {order}.",
        "Can you tell me the status of order #{order}?",
        "My package hasn't shown up yet, order number {order}.",
        "When will my {product} be delivered?",
        "Has order {order} been shipped yet?",
        "I'm still waiting for my order from {date}. Any news?",
        "The tracking for {order} hasn't changed in days. What's going on?",
        "Is my {product} on its way? Order {order}.",
        "How long until order {order} gets to {city}?",
        "Could you check where my parcel is? The order is {order}.",
        "It's been a week since I ordered the {product}. Where is it?",
    ],
    "refund": [
        "I want my money back for order {order}.",
        "How do I get a refund for the {product}?",
        "The {product} broke after two days, I'd like a refund.",
        "Please refund order {order}, I sent it back on {date}.",
        "Can I return the {product} and get my money back?",
        "I returned the {product}. When will I see the refund?",
        "I was charged twice for order {order}, please refund one payment.",
        "I'd like to cancel order {order} and get refunded.",
        "The refund for order {order} still hasn't reached my account.",
        "I don't want the {product} anymore, can I have a refund?",
        "Refund please, the {product} is not what I ordered.",
        "How long does a refund take? It's for order {order}.",
    ],
    "address_change": [
        "I need to change the delivery address for order {order}.",
        "Can you send my order to {address} instead?",
        "I moved to {city}, please update my shipping address.",
        "Wrong address on order {order}, it should be {address}.",
        "Please deliver order {order} to my office at {address}.",
        "Is it too late to change the address for my {product}?",
        "My new address is {address}, please update order {order}.",
        "Could the parcel go to {city} instead of my home?",
        "I typed the wrong street for order {order}. Can I fix it?",
        "Please ship to {address}, not to my old address.",
        "Can I change where order {order} is delivered?",
        "I won't be home on {date}, can you redirect the package to {address}?",
    ],
    "complaint": [
        "The {product} arrived broken and I'm really unhappy.",
        "Your courier was rude to me today.",
        "This is the third time my order has been late. Terrible service.",
        "I'm very disappointed with the quality of the {product}.",
        "Nobody answered my e-mail for a week. This is unacceptable.",
        "The box for order {order} was soaking wet when it arrived.",
        "I want to complain about the service I got on {date}.",
        "The {product} looks nothing like the picture on your site.",
        "Your hotline kept me on hold for an hour.",
        "Order {order} came with scratches all over it. Not happy at all.",
        "I'm fed up with your delivery delays.",
        "The staff in your {city} store were very unfriendly.",
    ],
    "product_question": [
        "Is the {product} available in blue?",
        "Does the {product} come with a warranty?",
        "What size is the {product}?",
        "Is the {product} in stock?",
        "Can the {product} go in the dishwasher?",
        "How much does the {product} weigh?",
        "Will the {product} be back in stock before {date}?",
        "Does the {product} need batteries?",
        "What is the {product} made of?",
        "Is the {product} suitable for children?",
        "Do you sell a cheaper version of the {product}?",
        "Can I buy the {product} in your {city} store?",
    ],
    "greeting": [
        "Hello!",
        "Hi there, is anyone around?",
        "Good morning.",
        "Hey, hope you're having a nice day!",
        "Hi, my name is {name}.",
        "Hello, how are you today?",
        "Good evening!",
        "Hi, this is {name} from {city}.",
        "Hey there!",
        "Hello, nice to meet you.",
        "Hi! Hope you're doing well.",
        "Good afternoon, {name} here.",
    ],
}
# training only, never held out: more ways customers say each thing, so the router learns the intent, not the words
EXTRA_TRAIN_TEMPLATES = {
    "order_status": ["Any update on {order}?", "my {product} isnt here yet", "Still no parcel. Order {order}.",
                     "Did you send out the {product} I bought on {date}?", "status of {order} please",
                     "Where's my stuff? Ordered on {date}.", "Tracking says nothing for {order}. Is it lost?",
                     "What's happening with my delivery to {city}?", "Is order {order} already with the courier?",
                     "I need to know when the {product} arrives."],
    "refund": ["Money back for {order}, please.", "refund the {product} pls", "I'd like to be reimbursed.",
               "You billed me for something I returned. Refund it.", "Can I get reimbursed for order {order}?",
               "When do I get my money for the returned {product}?", "Cancel and refund {order}.",
               "The {product} was faulty, I want a full refund.", "Please pay back what I spent on order {order}.",
               "Where is the refund you promised on {date}?"],
    "address_change": ["New address for {order}: {address}.", "update my address to {address} pls",
                       "I'm moving on {date}, deliver to {address}.", "Send the {product} to {city} instead.",
                       "The street on order {order} is wrong.", "Change shipping details for {order}, please.",
                       "Can you reroute my parcel to {address}?", "deliver to my work address: {address}",
                       "Please correct the delivery address of order {order}.",
                       "Ship order {order} to my parents in {city}."],
    "complaint": ["This is ridiculous, the {product} is useless.", "worst shopping experience ever",
                  "I am extremely annoyed with your company.", "The {product} stopped working and nobody cares.",
                  "Your service has gone downhill.", "Order {order} was a disaster from start to finish.",
                  "I'm angry: the courier threw the parcel over the fence.", "so disappointed with this shop",
                  "Nobody picks up the phone. Shameful.", "The {product} smells awful and looks cheap."],
    "product_question": ["Is there a {product} in a bigger size?", "how big is the {product}",
                         "Does the {product} work without a cable?", "What colours does the {product} come in?",
                         "Is the {product} waterproof?", "Can I wash the {product}?",
                         "How long is the warranty on the {product}?", "Where is the {product} produced?",
                         "do you have the {product} in stock", "What's the difference between the two {product}s?"],
    "greeting": ["Hiya!", "Morning!", "Hello there, {name} speaking.", "hey", "Hi team!", "Greetings!",
                 "Hello, anyone there?", "Hey, good to reach you.", "Hi, it's {name}.", "Evening!"],
}
# training only: other wordings of the router instruction, with the labels in any order; bench/chat_eval.py asks
# with its own held-out wordings, so the router must read the instruction, not recognise it
ROUTER_INSTRUCTIONS_TRAIN = [
    "Label the intent of the next message. Labels: {labels}. Reply with the label alone.",
    "You sort incoming support messages. Choose one of: {labels}. Say nothing but the label.",
    "Pick the category of this customer message from {labels}. Only the category, please.",
    "Intent detection. Allowed answers: {labels}. Write just one of them.",
    "Read the customer's text and tag it with one label ({labels}). No other words.",
    "Decide what the customer wants. Respond with a single label from this list: {labels}.",
    "Support triage: answer {labels}, whichever fits, and nothing more.",
    "Tag the message. Valid tags are {labels}. Return exactly one tag.",
]
# a greeting in front of another intent: the label is still what the customer wants
GREETING_PREFIXES = ["Hi, ", "Hello, ", "Good morning, ", "Hey, "]

# dialogues: {fact} is the fact; {ship} {ret} {open} {close} {free} {fee} {gift} come from the dialogue's shop
FACT_KINDS = ("order_number", "name", "email", "city")
FIRST_TURNS = {
    "order_number": ["Hi, my order number is {fact}.", "Hello, I'm writing about order {fact}.",
                     "My order number is {fact}.", "I have some questions about my order, it's number {fact}.",
                     "Hi! Order {fact} here, I have a few questions.", "Good morning, this is about order {fact}."],
    "name": ["Hi, my name is {fact}.", "Hello, this is {fact}.", "Hi, I'm {fact} and I have some questions.",
             "Good morning, {fact} here.", "Hello! My name's {fact}.", "Hi, the booking is under {fact}."],
    "email": ["Hi, my e-mail is {fact}.", "Hello, my account e-mail is {fact}.", "You can reach me at {fact}.",
              "Hi, I registered with {fact}.", "My e-mail address is {fact}, I have some questions.",
              "Hello, my login e-mail is {fact}."],
    "city": ["Hi, I live in {fact}.", "Hello, I'm writing from {fact}.",
             "I'm based in {fact} and have a few questions.", "Hi, my parcels go to {fact}.",
             "Hello! I'm a customer in {fact}.", "Good morning, I'm in {fact}."],
}
ACKNOWLEDGEMENTS = ["Thanks, noted. How can I help you?", "Hello! Got it. What can I do for you?",
                    "Thank you. What would you like to know?", "Welcome to Maple & Co.! How can I help?"]
FINAL_QUESTIONS = {
    "order_number": ["Which order were we talking about?", "Can you remind me of the order number I gave you?",
                     "What was my order number again?", "Sorry, which order number did I mention?",
                     "Remind me, what order is this about?", "Could you repeat my order number?"],
    "name": ["What name is the booking under?", "Do you remember my name?", "What name did I give you?",
             "Which name do you have for me?", "Sorry, who did I say I was?", "Can you repeat my name?"],
    "email": ["Which e-mail address did I give you?", "Where will you send the confirmation?",
              "Can you repeat my e-mail?", "What e-mail do you have for me?",
              "Which address will the receipt go to?", "Remind me which e-mail I gave you?"],
    "city": ["Which city did I say I'm in?", "Do you remember where I live?", "Where did I say I'm writing from?",
             "Which city will the parcel go to?", "Can you remind me of my city?", "What city did I mention?"],
}
FINAL_ANSWERS = {
    "order_number": ["We were talking about order {fact}.", "Your order number is {fact}."],
    "name": ["The booking is under the name {fact}.", "Your name is {fact}."],
    "email": ["You gave me {fact}.", "The e-mail you gave me is {fact}."],
    "city": ["You said you are in {fact}.", "You told me {fact}."],
}
# topic -> (user phrasings, replies); a dialogue's replies draw their numbers from one shop, so they agree
MIDDLE_TOPICS = {
    "shipping_time": (["How long does shipping take?", "When would a new order arrive?",
                       "How many days is delivery usually?", "What's your normal delivery time?",
                       "How fast do you ship?", "If I order today, when does it come?"],
                      ["Standard delivery takes {ship} working days.",
                       "Orders usually arrive within {ship} working days."]),
    "returns": (["What is your return policy?", "Can I send things back if they don't fit?",
                 "How long do I have to return an item?", "Do you accept returns?",
                 "Is there a deadline for returns?", "What if I change my mind about a purchase?"],
                ["You can return items within {ret} days for a full refund.",
                 "Returns are free within {ret} days of delivery."]),
    "opening_hours": (["When are you open?", "What are your opening hours?", "Until what time can I call you?",
                       "When can I reach your hotline?", "What time does support close?",
                       "Are you available in the morning?"],
                      ["Our support is open Monday to Friday, {open}:00 to {close}:00.",
                       "You can reach us on weekdays from {open}:00 to {close}:00."]),
    "payment": (["How can I pay?", "What payment options are there?", "Can I pay by card?",
                 "Do you accept PayPal?", "Which ways of paying do you accept?", "Is bank transfer possible?"],
                ["We accept card, PayPal and bank transfer.",
                 "You can pay by card, PayPal or bank transfer."]),
    "shipping_cost": (["How much is shipping?", "Is delivery free?", "What does shipping cost?",
                       "Do I pay for delivery?", "Are there shipping fees?", "When is shipping free?"],
                      ["Shipping is free over {free} euros, otherwise it costs {fee} euros.",
                       "Delivery costs {fee} euros, and it is free for orders over {free} euros."]),
    "gift_wrap": (["Do you offer gift wrapping?", "Can you wrap an order as a present?",
                   "Is gift wrap available?", "Could you pack it as a gift?", "Do you do gift wrapping?",
                   "Can I get it wrapped?"],
                  ["Yes, we can gift-wrap any order for {gift} euros.",
                   "Gift wrapping is available for {gift} euros per order."]),
    "abroad": (["Do you ship abroad?", "Can you deliver to other countries?",
                "Do you send parcels outside the country?", "Is international delivery possible?",
                "Do you deliver across Europe?", "Can I order from abroad?"],
               ["Yes, we ship across Europe; it takes a few days longer.",
                "We deliver to all EU countries, usually a few days slower than at home."]),
    "tracking": (["Will I get a tracking link?", "How can I follow my parcel?", "Do you send tracking numbers?",
                  "Can I track the delivery?", "How do I see where my parcel is?", "Is there parcel tracking?"],
                 ["Yes, you get a tracking link by e-mail as soon as the parcel leaves our warehouse.",
                  "We e-mail you a tracking link when the parcel is on its way."]),
    "thanks": (["Thanks, that helps.", "Great, thank you!", "OK, good to know.", "Perfect, thanks.",
                "Alright, thanks for explaining.", "Cool, thank you."],
               ["You're welcome! Anything else I can help with?", "Happy to help. Is there anything else?"]),
}
MIN_TURNS, MAX_TURNS = 5, 8
# training dialogues without the system prompt: the chat page and most clients send none, and the model should
# still answer as the shop's assistant (the held-out dialogues always have it, as bench/chat_eval.py asks)
NO_SYSTEM_SHARE = 0.3  # user turns per dialogue, the first and the last included


def split_ids(n: int, held_out: bool) -> list[int]:
    """Template indices of one side of the fixed split: every third (i % 3 == 2) is held out."""
    return [i for i in range(n) if (i % 3 == 2) == held_out]


def pick(rng: random.Random, templates: list[str], held_out: bool) -> tuple[int, str]:
    i = rng.choice(split_ids(len(templates), held_out))
    return i, templates[i]


def person(rng: random.Random) -> tuple[str, str]:
    return rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)


def order_number(rng: random.Random) -> str:
    return str(rng.randint(10000, 99999))


def slots(rng: random.Random) -> dict[str, str]:
    city = rng.choice(CITIES)
    return {"order": order_number(rng), "product": rng.choice(PRODUCTS), "city": city,
            "address": f"{rng.randint(1, 120)} {rng.choice(STREETS)}, {city}", "name": " ".join(person(rng)),
            "date": f"{rng.choice(MONTHS)} {rng.randint(1, 28)}"}


def intent_message(rng: random.Random, intent: str, held_out: bool) -> tuple[str, str]:
    """(template id, customer message), with the casual variation real chat messages show."""
    if not held_out and rng.random() < 0.5:
        i = rng.randrange(len(EXTRA_TRAIN_TEMPLATES[intent]))
        template_id, template = f"{intent}/extra{i}", EXTRA_TRAIN_TEMPLATES[intent][i]
    else:
        i, template = pick(rng, INTENT_TEMPLATES[intent], held_out)
        template_id = f"{intent}/{i}"
    text = template.format(**slots(rng))
    if intent != "greeting" and rng.random() < 0.15:
        text = rng.choice(GREETING_PREFIXES) + text[0].lower() + text[1:]
    if rng.random() < 0.2:
        text = text[0].lower() + text[1:]
    if rng.random() < 0.15 and text[-1] in ".!":
        text = text[:-1]
    return template_id, text


def router_instruction(rng: random.Random, held_out: bool) -> str:
    """The documented INTENT_PROMPT, or (in training, half the time) another wording with the labels shuffled."""
    if held_out or rng.random() < 0.5:
        return INTENT_PROMPT
    labels = rng.sample(INTENTS, len(INTENTS))
    return rng.choice(ROUTER_INSTRUCTIONS_TRAIN).format(labels=", ".join(labels))


def intent_examples(n: int, rng: random.Random, held_out: bool) -> list[dict]:
    """n routing examples, the intents in turn so every label is equally common."""
    examples = []
    for k in range(n):
        intent = INTENTS[k % len(INTENTS)]
        template_id, text = intent_message(rng, intent, held_out)
        examples.append(example([("system", router_instruction(rng, held_out)), ("user", text), ("assistant", intent)],
                                {"task": "intent", "intent": intent, "template": template_id}))
    return examples


def invented_word(rng: random.Random, syllables: int) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(syllables)).capitalize()


def make_fact(rng: random.Random, kind: str, held_out: bool) -> str:
    if kind == "order_number":
        return order_number(rng)
    # held out: no draw, so the val sets stay what they were before invented facts existed
    invented = not held_out and rng.random() < INVENTED_SHARE
    if invented:
        first, last = invented_word(rng, rng.randint(1, 2)), invented_word(rng, rng.randint(2, 3))
    else:
        first, last = person(rng)
    if kind == "name":
        return f"{first} {last}"
    if kind == "email":
        return f"{first.lower()}.{last.lower()}@{rng.choice(EMAIL_DOMAINS)}"
    return invented_word(rng, rng.randint(2, 3)) + rng.choice(TOWN_ENDINGS) if invented else rng.choice(CITIES)


def dialogue(rng: random.Random, held_out: bool) -> dict:
    kind = rng.choice(FACT_KINDS)
    fact = make_fact(rng, kind, held_out)
    n_turns = rng.randint(MIN_TURNS, MAX_TURNS)
    shop = {"ship": rng.choice(["2 to 3", "3 to 5", "2 to 4"]), "ret": rng.choice([14, 30]),
            "open": rng.choice([8, 9, 10]), "close": rng.choice([17, 18, 20]), "free": rng.choice([30, 50]),
            "fee": rng.choice(["3.90", "4.95", "5.50"]), "gift": rng.choice([2, 3])}

    i, first = pick(rng, FIRST_TURNS[kind], held_out)
    turns = [("system", SUPPORT_PROMPT), ("user", first.format(fact=fact)), ("assistant", rng.choice(ACKNOWLEDGEMENTS))]
    if not held_out and rng.random() < NO_SYSTEM_SHARE:
        turns = turns[1:]
    template_ids = [f"first/{kind}/{i}"]
    # distinct topics: asking the same thing twice would invite the model to answer it differently
    topics = rng.sample(list(MIDDLE_TOPICS), n_turns - 2)
    if topics[0] == "thanks":  # thanking before asking anything reads oddly
        topics.append(topics.pop(0))
    for topic in topics:
        questions, replies = MIDDLE_TOPICS[topic]
        i, question = pick(rng, questions, held_out)
        turns += [("user", question), ("assistant", rng.choice(replies).format(**shop))]
        template_ids.append(f"middle/{topic}/{i}")
    i, question = pick(rng, FINAL_QUESTIONS[kind], held_out)
    turns += [("user", question), ("assistant", rng.choice(FINAL_ANSWERS[kind]).format(fact=fact))]
    template_ids.append(f"final/{kind}/{i}")
    meta = {"task": "dialogue", "fact": fact, "fact_kind": kind, "turns": n_turns, "templates": template_ids}
    return example(turns, meta)


def dialogues(n: int, rng: random.Random, held_out: bool) -> list[dict]:
    return [dialogue(rng, held_out) for _ in range(n)]
