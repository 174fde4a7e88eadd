"""A shop's customer-service assistant, generated: intent routing and multi-turn dialogues that test recall.

Every phrasing template has an id, and a fixed third of each list (every index i with i % 3 == 2) is held
out: val examples use only those, train examples never do. So the val set measures whether the model learned
the task, not whether it memorised our sentences. The split does not depend on the seed, so evaluations of
runs with different seeds stay comparable.

A dialogue's first user turn states a fact (an order number, a name, an e-mail address or a city); the middle
turns are ordinary support talk; the last asks for the fact back, and the assistant's last answer repeats it
verbatim. The acknowledgement of the first turn does not repeat the fact, so the model must reach back to it.
Held-out facts come from small pools of real names and towns; a training fact is made up from syllables, drawn
from larger training-only pools of real ones, or (the rest) from the held-out pools.
A `Phrasebook` holds one language's dialogue templates: `ENGLISH` here, `CHINESE` in customer_service_zh.py.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

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
# training dialogues only, too: real names and towns none of the pools above holds. With three facts in four made up
# from syllables, the model learnt that a fact looks made up: asked for a pooled one it wrote syllables ("Omar Jones"
# came back as "Nian Jones"), and Chinese cities, whose made-up ones are rare characters, failed in every dialogue.
# Real-looking facts that are never the held-out ones leave copying the only way
TRAIN_FIRST_NAMES = [
    "Aaron", "Abby", "Adam", "Ahmed", "Alan", "Alex", "Alice", "Amara", "Amir", "Andrea", "Arjun", "Arthur", "Ben",
    "Bianca", "Caleb", "Carla", "Carlos", "Clara", "Daniel", "Dara", "David", "Diego", "Dina", "Ella", "Erik", "Eva",
    "Ezra", "Farah", "Fatima", "Finn", "Gabriel", "Grace", "Hugo", "Ines", "Isaac", "Jack", "Jade", "Jamal", "James",
    "Jasper", "Jin", "Joel", "Julia", "Kai", "Kara", "Karim", "Kate", "Laila", "Lara", "Leo", "Lily", "Maya",
    "Max", "Mei", "Mila", "Mira", "Nadia", "Naomi", "Nils", "Noah", "Nora", "Olga", "Oscar", "Paul", "Pedro", "Petra",
    "Rahul", "Rosa", "Ruth", "Sam", "Sara", "Selin", "Simon", "Sonia", "Stella", "Tariq", "Theo", "Vera",
    "Victor", "Yara", "Yusuf", "Zara", "Zoe"]
TRAIN_LAST_NAMES = [
    "Adams", "Almeida", "Andersen", "Bakker", "Bauer", "Brown", "Campbell", "Carter", "Castro", "Chen", "Clarke",
    "Cohen", "Costa", "Cruz", "Davies", "Diaz", "Eriksson", "Evans", "Fischer", "Fontaine", "Fraser", "Gomez", "Green",
    "Gupta", "Hansen", "Hart", "Hoffmann", "Horvat", "Hughes", "Ito", "Jansen", "Kaya", "Keller", "Kowalski", "Kruger",
    "Lambert", "Larsen", "Lewis", "Lopez", "Mahmoud", "Meyer", "Moreau", "Morris", "Mueller", "Nakamura", "Nielsen",
    "Nguyen", "Olsen", "Ortiz", "Park", "Perez", "Peters", "Popescu", "Price", "Quinn", "Reyes", "Richter", "Romano",
    "Ruiz", "Russo", "Santos", "Schneider", "Shah", "Singh", "Smith", "Sorensen", "Suzuki", "Tanaka", "Taylor",
    "Torres", "Varga", "Vogel", "Wagner", "Walker", "Wang", "Ward", "Wilson", "Wolf", "Yamamoto", "Yilmaz",
    "Ziegler", "Moretti", "Petrov", "Sokolova"]
TRAIN_CITIES = [
    "Aachen", "Alicante", "Amiens", "Antwerp", "Bari", "Bath", "Belfast", "Bern", "Bilbao", "Bonn", "Bordeaux",
    "Braga", "Bruges", "Cadiz", "Cardiff", "Coimbra", "Dijon", "Dresden", "Dundee", "Eindhoven", "Essen", "Exeter",
    "Faro", "Florence", "Freiburg", "Galway", "Genoa", "Geneva", "Gdansk", "Gothenburg", "Granada", "Groningen",
    "Haarlem", "Hanover", "Helsinki", "Innsbruck", "Kassel", "Kiel", "Kosice", "Leipzig", "Leuven", "Limerick", "Linz",
    "Liverpool", "Lisbon", "Lublin", "Lucerne", "Lund", "Maastricht", "Mainz", "Malaga", "Marseille", "Metz", "Munich",
    "Murcia", "Nantes", "Naples", "Norwich", "Odense", "Oslo", "Oxford", "Padua", "Palermo", "Parma", "Perugia",
    "Plymouth", "Poznan", "Reims", "Riga", "Rouen", "Salzburg", "Sheffield", "Siena", "Stavanger", "Tallinn",
    "Tampere", "Toulouse", "Trieste", "Trondheim", "Turku", "Uppsala", "Valencia", "Verona", "Vienna", "Vigo",
    "Vilnius", "Wroclaw", "York", "Zagreb", "Zurich"]
# where a training fact comes from: made up, the training-only real names above, else the held-out pools
INVENTED_SHARE = 0.4
TRAIN_POOL_SHARE = 0.45
# the kinds a made-up fact may be. Not names: with syllable names among the recall chats' facts too, the model
# answered held-out names with syllables ("Elena Patel" as "Norank Ch Fatel"); a name meant to be made up is a
# training-only real one instead, which can only be copied too. (That alone did not bring the names back: most were
# lost to a phrasing, see the extra name turns below)
INVENTED_KINDS = ("city", "email")

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
                     "I need to know when the {product} arrives.",
                     "hi, just checking in on {order}, has it left the warehouse?",
                     "I was wondering whether my {product} has been dispatched yet.",
                     "ordered on {date}, nothing so far. whats the holdup", "wheres my order?? its been ages",
                     "Could you give me an estimated delivery date for {order}?",
                     "The tracking page just says 'label created' for {order}. Is it actually moving?",
                     "My {product} was supposed to arrive by {date}. Is it still coming?",
                     "Hello, {name} here. I'd love to know when my parcel to {city} will turn up.",
                     "Is the courier bringing {order} today or tomorrow?",
                     "Just wondering if there's any news on my delivery.",
                     "order {order} - dispatched or still sitting in your warehouse?",
                     "Seriously, when am I going to get my {product}? It's order {order}.",
                     "I paid for express shipping on {date}. When does it get here?",
                     "Has anything happened with {order}? The app shows no movement.",
                     "Can someone look up the delivery date for the {product} I bought?", "wen will my parcel arive",
                     "The {product} I ordered is a birthday present for {date}. Will it arrive in time?",
                     "Which courier has {order}, and what's the tracking number?",
                     "I haven't received a shipping confirmation for {order}.",
                     "Is my parcel stuck somewhere? Nothing has moved since {date}.",
                     "Good morning! Could you let me know where {order} is at the moment?",
                     "Not complaining, I just want to know when the {product} will turn up.", "我的订单{order}到哪了？",
                     "你好，我{date}下的单，怎么还没发货？", "请问{product}什么时候能送到？",
                     "订单{order}的物流一直没更新，麻烦帮我查一下。", "快递到{city}大概要几天？单号{order}。",
                     "我买的{product}怎么还没到，是不是寄丢了？", "在吗？想问下我的包裹现在到哪里了",
                     "帮我看看{order}这单物流到哪一步了",
                     # "shipped" and "sent" were only in other intents' phrasings ("Do you ship the X with...")
                     "Did order {order} ship yet?", "Has my {product} been sent out?",
                     "Was my parcel shipped already? Order {order}.", "When was order {order} sent?",
                     "Can you see if order {order} went out?", "I paid days ago. Has anything been shipped?",
                     # time gone by since the order, then "where": a parcel, though it reads like a product question
                     "The {product} was ordered ten days ago and still isn't here. What's up?",
                     "Two weeks have passed since I bought the {product}. Where has it got to?",
                     "I placed my order on {date}. Why hasn't the {product} come yet?",
                     "My order went through ages ago, where's the {product}?",
                     "Bought a {product} last Monday, still waiting. Where's it at?"],
    "refund": ["Money back for {order}, please.", "refund the {product} pls", "I'd like to be reimbursed.",
               "You billed me for something I returned. Refund it.", "Can I get reimbursed for order {order}?",
               "When do I get my money for the returned {product}?", "Cancel and refund {order}.",
               "The {product} was faulty, I want a full refund.", "Please pay back what I spent on order {order}.",
               "Where is the refund you promised on {date}?",
               "Hi there! Could I be refunded for the {product}? It doesn't fit.",
               "I was wondering whether I could still get a refund on {order}.",
               "refund pls. order {order}. item never worked",
               "You took the payment twice, I want one of them reversed.",
               "Order {order} arrived damaged and I'd rather have the money than a replacement.",
               "The {product} is broken. I don't want a new one, just refund me.",
               "What's the status of my refund for {order}?",
               "I sent the {product} back on {date}. Has the money been returned yet?", "Give me my money back. Now.",
               "I cancelled {order} before it shipped. When will the payment be reversed?",
               "Can you credit the amount back to my card?",
               "Hello, {name} here. I'm returning the {product} and would like a refund to my PayPal.",
               "i want a refund this {product} is junk",
               "Is it possible to get reimbursed for the shipping cost on {order}?",
               "Your site promises a money-back guarantee. I'd like to use it for the {product}.",
               "Parcel never came. Refund {order} to my card, please.",
               "How do refunds work if I paid with a gift card?",
               "I'd like to return the {product} for a full refund, where do I send it?",
               "Still waiting on the money for {order}, it's been two weeks.",
               "Could you kindly process the reimbursement for my return from {date}?",
               "partial refund for the scratched {product}? i'd keep it then",
               "I ordered the wrong size {product}; can I send it back and get the money?", "我要退款，订单号{order}。",
               "你好，{product}质量有问题，能退钱吗？", "{product}退回去两个星期了，钱还是没看到，怎么回事？",
               "订单{order}我不想要了，麻烦取消并退款。", "退款流程是怎样的？需要我先寄回商品吗？",
               "我被重复扣款了，请把多扣的钱退给我。", "{product}收到就是坏的，我不要换货，直接退款。",
               "在吗？我想申请退款",
               # money that has not come back: the words of a late parcel, yet a refund
               "The money for order {order} is still not in my bank account.",
               "My refund hasn't shown up on my card yet.",
               "You said the refund was sent, but my account shows nothing.",
               "I returned order {order} weeks ago and I'm still waiting for the money.",
               "When will the refund for the {product} be paid out?"],
    "address_change": ["New address for {order}: {address}.", "update my address to {address} pls",
                       "I'm moving on {date}, deliver to {address}.", "Send the {product} to {city} instead.",
                       "The street on order {order} is wrong.", "Change shipping details for {order}, please.",
                       "Can you reroute my parcel to {address}?", "deliver to my work address: {address}",
                       "Please correct the delivery address of order {order}.",
                       "Ship order {order} to my parents in {city}.",
                       "hi, quick one: could you send the {product} to {address} rather than my home?",
                       "I was wondering whether I can still update the shipping address on {order}.",
                       "postcode on {order} is off by one digit, pls correct before dispatch",
                       "I'll be at my sister's in {city} on {date}, so please send {order} there.",
                       "My order {order} is heading to my old flat. Please send it to {address}.",
                       "Can I collect {order} at a pickup point in {city} instead of home delivery?",
                       "Please amend the delivery address: {address}.",
                       "I entered my old address by mistake for the {product}. Correct one is {address}.",
                       "Hello, {name} here. Everything should now go to {address}, my old flat is gone.",
                       "Order {order} has flat 2 missing from the address, can you add it?",
                       "change address. {address}. order {order}.",
                       "Could you update my account so future orders ship to {address}?",
                       "Is it possible to redirect {order} while it's already with the courier?",
                       "Ugh, I forgot to change my address. Order {order} needs to go to {address}.",
                       "My {product} is being shipped to my old place in {city}, can that be changed?",
                       "Please leave the parcel with my neighbour at {address} instead.",
                       "I'm not sure the address on {order} is right, it should read {address}.",
                       "can u send it to my office instead, {address}",
                       "Hi! Before {order} ships, I'd like to swap the delivery address to {address}.",
                       "The delivery city on {order} should be {city}.",
                       "Is there a way to edit the shipping address after checkout?",
                       "I'd like {order} sent to a different address, please.", "我想修改订单{order}的收货地址。",
                       "你好，地址填错了，应该是{address}。", "我最近搬家了，以后的包裹都寄到{address}吧。",
                       "{product}还没发货的话，能不能改寄到{address}？", "订单{order}请改送到我公司：{address}",
                       "下单时选错了地址，还能改成{address}吗？", "麻烦把我的包裹转寄到{city}，谢谢！",
                       "收件人电话和地址都要改，订单{order}，新地址{address}。"],
    "complaint": ["This is ridiculous, the {product} is useless.", "worst shopping experience ever",
                  "I am extremely annoyed with your company.", "The {product} stopped working and nobody cares.",
                  "Your service has gone downhill.", "Order {order} was a disaster from start to finish.",
                  "I'm angry: the courier threw the parcel over the fence.", "so disappointed with this shop",
                  "Nobody picks up the phone. Shameful.", "The {product} smells awful and looks cheap.",
                  "Order {order} was late, the {product} was dented, and nobody apologised.",
                  "I'm writing to express my dissatisfaction with how my return was handled.",
                  "ur customer service is a joke",
                  "I was wondering whether anyone actually reads these messages. Three e-mails, no reply.",
                  "The delivery driver left my {product} on the street for anyone to take.",
                  "Hi, {name} here. I have to say I'm really unhappy with {order}.",
                  "The {product} fell apart after one use. What a waste of money.",
                  "Your packaging is excessive, so much plastic for a tiny {product}.",
                  "I've been a loyal customer for years and this is how you treat me?",
                  "The courier claimed he tried to deliver {order} but I was home all day.",
                  "absolutely disgusted with the state order {order} arrived in",
                  "Your website keeps crashing at checkout, very frustrating.",
                  "I'd like to file a formal complaint about your driver.",
                  "The {product} I got is clearly used. Disgraceful.", "The chat agent on {date} hung up on me.",
                  "I'm not asking for anything, I just want you to know the {product} quality is awful.",
                  "Why do your parcels always come crushed?",
                  "Your {city} pickup point was closed during opening hours. Again.",
                  "Honestly, the way your team handled {order} was embarrassing.",
                  "Missing parts, no manual, and a rude reply from support. Great job.",
                  "I expected much better from a shop with your reputation.",
                  "The {product} gave me a rash and your team just ignored me.",
                  "{product}收到就是坏的，太让人失望了！", "你们的客服态度太差了。",
                  "订单{order}晚了一个星期才到，包装还破了。", "快递员直接把包裹扔在门口，很不满意。",
                  "我要投诉，说好的赠品根本没有发。", "这是我最后一次在你们家买东西了。",
                  "质量太差了，和图片完全不一样。", "你们的退货流程太麻烦了，折腾了我一个月。",
                  # shops, pictures and wet boxes: complaints whose words belong to other intents too
                  "The assistant at your {city} shop was so rude I walked out.",
                  "I queued for forty minutes at the {city} branch and nobody helped me.",
                  "What you delivered is not the {product} shown in the photos. Misleading.",
                  "The colour of the {product} is completely different from the website. Very disappointing.",
                  "The parcel came torn open and half the packaging was missing.",
                  "Order {order} turned up crushed and dirty. Not acceptable."],
    "product_question": ["Is there a {product} in a bigger size?", "how big is the {product}",
                         "Does the {product} work without a cable?", "What colours does the {product} come in?",
                         "Is the {product} waterproof?", "Can I wash the {product}?",
                         "How long is the warranty on the {product}?", "Where is the {product} produced?",
                         "do you have the {product} in stock", "What's the difference between the two {product}s?",
                         "Quick question: is the {product} machine washable?",
                         "I was wondering whether the {product} comes in other colours.",
                         "Is the {product} compact enough to take on a plane?",
                         "Before I order: does the {product} ship with a charger?",
                         "Hi, {name} here. Is the {product} any good for travelling?",
                         "Do you ship the {product} with a plug for the UK?",
                         "does the {product} have a lifetime guarantee?", "Is the {product} vegan?",
                         "Is the {product} easy to set up, or do I need tools?",
                         "Is the {product} you sell the new model or last year's?",
                         "Will the {product} still be on sale after {date}?",
                         "I already ordered a {product} (order {order}). Does it come with a manual in German?",
                         "is this {product} good quality or cheap stuff?",
                         "Can the {product} be engraved or personalised?",
                         "What's the price of the {product} right now?",
                         "Is the {product} delivered assembled or flat-packed?",
                         "Are replacement parts available for the {product}?",
                         "Would the {product} make a good gift for a ten-year-old?",
                         "My {product} from order {order} works fine, I'm just curious: how do I clean it?",
                         "Is the {product} ethically made?",
                         "Do you have any reviews or photos of the {product} in use?",
                         "Can I get the {product} in a set of two?", "这个{product}有没有大一号的？",
                         "{product}可以用在户外吗？", "这个{product}用久了会不会掉色？",
                         "{product}坏了可以免费维修吗？", "你好，{product}送长辈合适吗？",
                         "{product}怎么安装，难不难？", "{product}和上一款比有什么区别？",
                         "想问一下{product}有没有优惠？",
                         # shops: buying in person is a question about the product, not a complaint
                         "Do you have a shop in {city} where I could see the {product}?",
                         "Is the {product} sold in your shops, or only online?",
                         "Could I pick up a {product} in person at your {city} branch?",
                         "Which of your stores has the {product} on the shelf?",
                         "Can I try the {product} in a shop before I order it?",
                         "Do your {city} shops stock the {product}?", "{city}的门店有{product}卖吗？",
                         "可以去实体店买{product}吗？",
                         # an order number in a product question: the phrasings with one are few, and a '#' before
                         # it must not read as order_status
                         "Is the {product} from order {order} the same model as the one in your shops?",
                         "Does the {product} in order {order} take standard batteries?"],
    "greeting": ["Hiya!", "Morning!", "Hello there, {name} speaking.", "hey", "Hi team!", "Greetings!",
                 "Hello, anyone there?", "Hey, good to reach you.", "Hi, it's {name}.", "Evening!", "hi",
                 "Hello hello!", "yo", "Hey, just saying hi.", "Hi, I'm new here.", "Hi there :)",
                 "Hello! Lovely weather in {city} today.", "Hey! My name's {name}, nice to e-meet you.",
                 "Hi, I'm {name}. First time using this chat.", "Good day to you!",
                 "Hello, is this the Maple & Co. support chat?", "hey whats up", "Hi! Hope your week is going well.",
                 "Hello, just popping in to say hello.", "Happy Friday!", "Hi again, it's me.",
                 "Hey, it's {name} again.", "Hello, thanks for being here.", "Hiii", "Hello, anybody home?",
                 "Greetings from {city}!", "Hi! Nice chatting with you again.", "你好，在吗？", "您好！", "哈喽～",
                 "嗨，有人吗？", "你好，我是{name}。", "大家好！", "你好呀，客服小姐姐",
                 "哈喽，第一次来你们店，打个招呼"],
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
# training only: said around any intent but a greeting, so none of them owns these words
NEUTRAL_OPENINGS = ["Quick question: ", "Sorry to bother you, ", "One more thing: ", "Excuse me, ",
                    "I have a question. ", "Can you help me? ", "Could you help? ", "Could you assist? ",
                    "Hope you can help: ", "Please help: ", "请问，", "麻烦问一下，"]
NEUTRAL_ENDINGS = [" Thanks!", " Thank you.", " Cheers.", " Can you help?", " Please let me know.",
                   " Thanks in advance.", " 谢谢！"]

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
# training only, never held out: more ways to give the fact and to ask it back. With four of each, the model learnt
# the four and read a held-out "Can you repeat my e-mail?" as a question about tracking e-mails
EXTRA_FIRST_TURNS = {
    "order_number": ["Hello, I'd like to ask about order {fact}.", "Quick question regarding order {fact}.",
                     "Hey, order {fact} is the one I'm asking about.", "Order number: {fact}.",
                     "Hi there, I placed order {fact} last week.", "It's about order {fact}, if that helps.",
                     "Hello! I'm contacting you about my purchase, order {fact}.",
                     "The number on my receipt is {fact}."],
    "name": ["Hello, {fact} speaking.", "Hey, it's {fact}.", "Hi, you're chatting with {fact}.",
             "My name is {fact}, nice to meet you.", "Hi, {fact} here, I've got a couple of questions.",
             "Good afternoon, I am {fact}.", "The order is in the name of {fact}.", "This is {fact} writing, hello.",
             # "I'm" came before a town only ("I'm writing from..."), so a name after it was never looked at again:
             # the held-out "Hi, I'm X and..." dialogues recalled no name (bench/recall_heads.py, runs/mm-chat36)
             "Hello, I'm {fact}.", "Hey there, I'm {fact}, could you help me?", "I'm {fact}, good evening.",
             "I placed the order under {fact}."],
    "email": ["Hi, my address for e-mails is {fact}.", "Please note my e-mail: {fact}.",
              "Hello, I signed up using {fact}.", "Contact e-mail: {fact}.", "Hey, write to me at {fact} if needed.",
              "My account is registered to {fact}.", "Good afternoon, {fact} is my e-mail.",
              "Hi, send any updates to {fact}."],
    "city": ["Hello from {fact}!", "Hi, I'm located in {fact}.", "My home is in {fact}.",
             "Hey, I'm ordering from {fact}.", "Hi, I stay in {fact} and need some help.",
             "Good afternoon, I'm a customer living in {fact}.", "Hi, deliveries for me go to {fact}.",
             "I'm writing to you from {fact}."],
}
EXTRA_FINAL_QUESTIONS = {
    "order_number": ["Which order number was it?", "Tell me the order number I mentioned.",
                     "What order did I say this was about?", "Do you still have my order number?",
                     "Can you confirm the order number?", "Sorry, I forgot. What's my order number?",
                     "Say my order number back to me, please.", "Could you read out my order number?"],
    "name": ["What's my name?", "Who am I, according to you?", "Can you tell me my name again?",
             "What did I say my name was?", "Whose name is on the booking?", "Please say my name back to me.",
             "Could you confirm my name?", "Under which name am I registered?"],
    "email": ["What's my e-mail address?", "Can you tell me the e-mail I mentioned?",
              "Which e-mail is on my account?", "Where will you e-mail me?", "Could you confirm my e-mail address?",
              "Say my e-mail back to me, please.", "Which e-mail did I mention earlier?",
              "Do you still have my e-mail?"],
    "city": ["Where am I based?", "Which town did I say?", "Where do I live, again?",
             "Can you tell me the city I mentioned?", "What place do I come from?", "Where are my parcels going?",
             "Could you confirm my city?", "Do you still know my city?"],
}
EXTRA_SHARE = 0.5  # of training intents, dialogues' first turns and last questions, drawn from the extras
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
# a dialogue's shop: each figure drawn once from these, in this order, so the replies agree with each other
SHOP = {"ship": ["2 to 3", "3 to 5", "2 to 4"], "ret": [14, 30], "open": [8, 9, 10], "close": [17, 18, 20],
        "free": [30, 50], "fee": ["3.90", "4.95", "5.50"], "gift": [2, 3]}
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


def pick_train_or_extra(rng: random.Random, templates: list[str], extra: list[str], held_out: bool,
                        ) -> tuple[str, str]:
    """(template id, template): held out, one of the held-out templates; in training, often one of the extras."""
    if not held_out and extra and rng.random() < EXTRA_SHARE:
        i = rng.randrange(len(extra))
        return f"extra{i}", extra[i]
    i, template = pick(rng, templates, held_out)
    return str(i), template


def person(rng: random.Random) -> tuple[str, str]:
    return rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)


def order_number(rng: random.Random) -> str:
    return str(rng.randint(10000, 99999))


def slots(rng: random.Random) -> dict[str, str]:
    city = rng.choice(CITIES)
    return {"order": order_number(rng), "product": rng.choice(PRODUCTS), "city": city,
            "address": f"{rng.randint(1, 120)} {rng.choice(STREETS)}, {city}", "name": " ".join(person(rng)),
            "date": f"{rng.choice(MONTHS)} {rng.randint(1, 28)}"}


def intent_message(rng: random.Random, intent: str, held_out: bool) -> tuple[str, str, dict[str, str]]:
    """(template id, customer message, the slots it was filled from), with the casual variation real chat
    messages show."""
    i, template = pick_train_or_extra(rng, INTENT_TEMPLATES[intent], EXTRA_TRAIN_TEMPLATES[intent], held_out)
    template_id = f"{intent}/{i}"
    filled = slots(rng)
    text = template.format(**filled)
    if intent != "greeting" and rng.random() < 0.15:
        text = rng.choice(GREETING_PREFIXES) + text[0].lower() + text[1:]
    if rng.random() < 0.2:
        text = text[0].lower() + text[1:]
    if rng.random() < 0.15 and text[-1] in ".!":
        text = text[:-1]
    if not held_out:  # after the draws the held-out set makes too, so it stays what it was
        text = neutral_wrapping(rng, text, intent, filled["order"])
    return template_id, text, filled


def neutral_wrapping(rng: random.Random, text: str, intent: str, order: str) -> str:
    """Training only: openings and endings any intent may have, and '#' before order numbers, so that no intent
    owns "Can you ...", "Thanks!" or a '#' (a held-out "Can you tell me the status of order #N?" was read as a
    product question)."""
    if order in text and rng.random() < 0.3:
        text = text.replace(order, "#" + order)
    if intent != "greeting" and rng.random() < 0.3:
        text = rng.choice(NEUTRAL_OPENINGS) + text[0].lower() + text[1:]
    if intent != "greeting" and rng.random() < 0.2:
        text = text.rstrip() + rng.choice(NEUTRAL_ENDINGS)
    return text


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
        template_id, text, _ = intent_message(rng, intent, held_out)
        examples.append(example([("system", router_instruction(rng, held_out)), ("user", text), ("assistant", intent)],
                                {"task": "intent", "intent": intent, "template": template_id}))
    return examples


def invented_word(rng: random.Random, syllables: int) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(syllables)).capitalize()


def fact_source(rng: random.Random, held_out: bool) -> str:
    """Where a name, e-mail or town comes from: "invented", "train_pool" or (always when held out) "pool"."""
    if held_out:  # no draw, so the val sets stay what they were before invented facts existed
        return "pool"
    r = rng.random()
    return "invented" if r < INVENTED_SHARE else "train_pool" if r < INVENTED_SHARE + TRAIN_POOL_SHARE else "pool"


def make_fact(rng: random.Random, kind: str, held_out: bool) -> str:
    if kind == "order_number":
        return order_number(rng)
    source = fact_source(rng, held_out)
    if source == "invented" and kind not in INVENTED_KINDS:
        source = "train_pool"
    if source == "invented":
        first, last = invented_word(rng, rng.randint(1, 2)), invented_word(rng, rng.randint(2, 3))
    elif source == "train_pool":
        first, last = rng.choice(TRAIN_FIRST_NAMES), rng.choice(TRAIN_LAST_NAMES)
    else:
        first, last = person(rng)
    if kind == "name":
        return f"{first} {last}"
    if kind == "email":
        return f"{first.lower()}.{last.lower()}@{rng.choice(EMAIL_DOMAINS)}"
    if source == "invented":
        return invented_word(rng, rng.randint(2, 3)) + rng.choice(TOWN_ENDINGS)
    return rng.choice(TRAIN_CITIES if source == "train_pool" else CITIES)


@dataclass(frozen=True)
class Phrasebook:
    """What a support dialogue says in one language: every template list follows the held-out split by index."""

    support_prompt: str
    first_turns: dict[str, list[str]]  # fact kind -> {fact} templates
    acknowledgements: list[str]
    middle_topics: dict[str, tuple[list[str], list[str]]]  # topic -> (user phrasings, replies with shop slots)
    final_questions: dict[str, list[str]]
    final_answers: dict[str, list[str]]
    extra_first_turns: dict[str, list[str]]  # training only, like the two below
    extra_final_questions: dict[str, list[str]]
    shop: dict[str, list]  # slot -> choices
    make_fact: Callable[[random.Random, str, bool], str]  # (rng, kind, held_out); no rng draw for made-up facts
    lang: str | None  # meta["lang"]; None for English, whose files predate the field and stay byte-identical


ENGLISH = Phrasebook(SUPPORT_PROMPT, FIRST_TURNS, ACKNOWLEDGEMENTS, MIDDLE_TOPICS, FINAL_QUESTIONS, FINAL_ANSWERS,
                     EXTRA_FIRST_TURNS, EXTRA_FINAL_QUESTIONS, SHOP, make_fact, lang=None)


def dialogue(rng: random.Random, held_out: bool, book: Phrasebook = ENGLISH) -> dict:
    kind = rng.choice(FACT_KINDS)
    fact = book.make_fact(rng, kind, held_out)
    n_turns = rng.randint(MIN_TURNS, MAX_TURNS)
    shop = {slot: rng.choice(choices) for slot, choices in book.shop.items()}

    i, first = pick_train_or_extra(rng, book.first_turns[kind], book.extra_first_turns[kind], held_out)
    turns = [("system", book.support_prompt), ("user", first.format(fact=fact)),
             ("assistant", rng.choice(book.acknowledgements))]
    if not held_out and rng.random() < NO_SYSTEM_SHARE:
        turns = turns[1:]
    template_ids = [f"first/{kind}/{i}"]
    # distinct topics: asking the same thing twice would invite the model to answer it differently
    topics = rng.sample(list(book.middle_topics), n_turns - 2)
    if topics[0] == "thanks":  # thanking before asking anything reads oddly
        topics.append(topics.pop(0))
    for topic in topics:
        questions, replies = book.middle_topics[topic]
        i, question = pick(rng, questions, held_out)
        turns += [("user", question), ("assistant", rng.choice(replies).format(**shop))]
        template_ids.append(f"middle/{topic}/{i}")
    i, question = pick_train_or_extra(rng, book.final_questions[kind], book.extra_final_questions[kind], held_out)
    turns += [("user", question), ("assistant", rng.choice(book.final_answers[kind]).format(fact=fact))]
    template_ids.append(f"final/{kind}/{i}")
    meta = {"task": "dialogue", "fact": fact, "fact_kind": kind, "turns": n_turns, "templates": template_ids}
    if book.lang is not None:
        meta["lang"] = book.lang
    return example(turns, meta)


def dialogues(n: int, rng: random.Random, held_out: bool, book: Phrasebook = ENGLISH) -> list[dict]:
    return [dialogue(rng, held_out, book) for _ in range(n)]
