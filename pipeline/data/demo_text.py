"""Hand-written text for the synthetic demo dataset (see `pipeline.data.demo`).

Every sentence here was composed for this project; none is taken from EmpatheticDialogues, EPITOME or any
other corpus. Topics give situations per emotion; the block tables hold the response pieces whose presence
decides each empathy level (ER emotional reactions, IP interpretations, EX explorations). Longer than
the ~450-line rule on purpose: it is data, not logic, and one table split over files reads worse.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

Valence = Literal["neg", "pos"]


@dataclass(frozen=True)
class Topic:
    """One situation a speaker (ED) or seeker (EPITOME) talks about."""

    situation: str
    """First-person description; the ED `prompt` and the core of the opening turn."""
    detail: str
    """A follow-up sentence the speaker adds later."""
    about: str
    """Second-person noun phrase a listener can ask about ("having to move out so suddenly")."""
    mine: str
    """A listener's own similar experience, read after "when" ("I had to move out on short notice")."""


@dataclass(frozen=True)
class Emotion:
    valence: Valence
    feelings: tuple[str, ...]
    """Phrases that read after "feeling" and "I felt"."""
    topics: tuple[Topic, Topic, Topic]


def _t(situation: str, detail: str, about: str, mine: str) -> Topic:
    return Topic(situation, detail, about, mine)


EMOTIONS: Final[dict[str, Emotion]] = {
    "afraid": Emotion("neg", ("scared and jumpy", "constantly on edge"), (
        _t("I heard someone trying to open my back door late last night while I was home alone.",
           "I called the police but they found nothing, and now every little noise wakes me up.",
           "feeling unsafe in your own home", "someone broke into my car outside my apartment"),
        _t("My doctor found a lump during my checkup and I have to wait two weeks for the biopsy results.",
           "I keep searching for the worst case online and I can't focus on anything at work.",
           "waiting on those biopsy results", "I had to wait on test results after a scan last year"),
        _t("I have to fly across the country next month and I have never been on a plane.",
           "Every time I picture the takeoff my hands start shaking.",
           "the flight coming up", "I took my first flight at twenty-five"),
    )),
    "angry": Emotion("neg", ("angry and unheard", "really worked up"), (
        _t("My roommate used my car without asking and returned it with an empty tank and a dent.",
           "When I brought it up he just shrugged and said it was already like that.",
           "your roommate treating your car like that", "a housemate borrowed my bike and wrecked the wheel"),
        _t("My manager took credit for a project I spent three months building.",
           "He presented it to the directors without even mentioning my name.",
           "having your work claimed by your manager", "a coworker passed off my report as their own"),
        _t("The airline lost my luggage and nobody at the desk would tell me anything.",
           "My medication was in that bag and they just kept handing me another form.",
           "the airline losing your bag", "an airline lost my suitcase on a work trip"),
    )),
    "annoyed": Emotion("neg", ("completely fed up", "irritated all day"), (
        _t("My upstairs neighbor has been vacuuming at midnight every night this week.",
           "I left a polite note and the next night it was even louder.",
           "the noise from upstairs", "I lived under a neighbor who stomped around at night"),
        _t("My sister keeps borrowing my clothes and returning them stained.",
           "She acts like I'm being dramatic whenever I mention it.",
           "your sister not respecting your things", "my brother kept taking my headphones without asking"),
        _t("The cable company has rescheduled my installation three times now.",
           "Each time I took the morning off work and nobody showed up.",
           "all those missed appointments", "I waited four days in a row for a repair technician"),
    )),
    "anxious": Emotion("neg", ("knotted up inside", "unable to switch off"), (
        _t("I have a job interview on Friday for a position I really want.",
           "I keep rehearsing answers in my head and I barely slept last night.",
           "the interview on Friday", "I interviewed for my first real job"),
        _t("My rent went up and I am not sure I can cover it next month.",
           "I have been checking my bank balance every few hours.",
           "the rent increase", "my rent jumped right after I changed jobs"),
        _t("I have to give a speech at my best friend's wedding.",
           "I am terrified I will forget everything the moment I stand up.",
           "the wedding speech", "I gave a toast at my cousin's wedding"),
    )),
    "apprehensive": Emotion("neg", ("uneasy about what was coming", "unsure and tense"), (
        _t("I agreed to let my teenage son drive to the coast with his friends this weekend.",
           "He only got his license two months ago and the roads are supposed to be icy.",
           "letting your son take that drive", "my daughter drove on the highway alone for the first time"),
        _t("My company announced a restructuring meeting for next Monday.",
           "Nobody will say whether jobs are being cut, and the rumors are everywhere.",
           "not knowing what the restructuring means for you", "my old company went through a round of layoffs"),
        _t("I signed up for a surgery that is supposed to fix my knee.",
           "The surgeon says it is routine, but the recovery sounds long and painful.",
           "the knee surgery", "I had shoulder surgery a few years back"),
    )),
    "ashamed": Emotion("neg", ("small and ashamed", "like a letdown"), (
        _t("I lost my temper and yelled at my kids over something tiny.",
           "The look on my daughter's face has been stuck in my head all day.",
           "losing your temper with your kids", "I snapped at my son after a long shift"),
        _t("I failed my driving test for the third time.",
           "My younger cousin passed on her first try and everyone keeps bringing it up.",
           "failing the test again", "I failed my math exam twice in college"),
        _t("I forgot my best friend's birthday this year.",
           "She didn't say anything, but I could tell she was hurt.",
           "forgetting her birthday", "I missed my brother's graduation because I mixed up the dates"),
    )),
    "devastated": Emotion("neg", ("completely shattered", "numb and empty"), (
        _t("My dog of fourteen years passed away this morning.",
           "The house is so quiet now and I keep expecting to hear her at the door.",
           "losing your dog", "I lost my cat after sixteen years"),
        _t("My fiance called off our engagement two months before the wedding.",
           "We had already sent the invitations and now I have to tell everyone.",
           "the engagement ending so suddenly", "my long-term partner left me out of nowhere"),
        _t("My grandmother died last week and I didn't make it home in time to say goodbye.",
           "I keep replaying our last phone call and wishing I had said more.",
           "not getting to say goodbye to your grandmother", "my grandfather passed while I was overseas"),
    )),
    "disappointed": Emotion("neg", ("let down", "deflated"), (
        _t("I didn't get the promotion I have been working toward for two years.",
           "They gave it to someone who joined the team six months ago.",
           "missing out on the promotion", "I was passed over for a lead role at work"),
        _t("My best friend canceled our vacation plans at the last minute.",
           "I had already booked the time off and paid for the cabin.",
           "the trip falling through", "a friend bailed on a trip we had planned for months"),
        _t("My band's first concert only had five people in the audience.",
           "We practiced every night for months and put posters all over town.",
           "the small turnout", "I played my first open mic to an almost empty room"),
    )),
    "disgusted": Emotion("neg", ("grossed out", "queasy and disgusted"), (
        _t("I found a cockroach in my salad at a restaurant I used to love.",
           "The waiter just took the plate away and still charged us for it.",
           "what happened at that restaurant", "I found a hair baked into a loaf of bread"),
        _t("My coworker never washes his hands after using the bathroom.",
           "Then he grabs snacks from the shared bowl on my desk.",
           "sharing an office with him", "I shared a kitchen with someone who never cleaned up"),
        _t("I watched a man kick a stray dog on my way home.",
           "People walked right past and nobody said a word.",
           "seeing that happen to the dog", "I saw someone dump a box of kittens by the road"),
    )),
    "embarrassed": Emotion("neg", ("mortified", "hot with embarrassment"), (
        _t("I waved back at someone at the mall who was actually waving at the person behind me.",
           "I tried to play it off by fixing my hair but it was obvious.",
           "that awkward moment at the mall", "I called my teacher mom in front of the whole class"),
        _t("I tripped on the stage steps while walking up to get my diploma.",
           "The whole auditorium laughed and my family caught it on video.",
           "tripping at graduation", "I fell off my chair during a job interview"),
        _t("I sent a message complaining about my boss to my boss by mistake.",
           "She replied with a thumbs up and hasn't mentioned it since.",
           "sending that message to the wrong person", "I replied to a whole company email meant for one friend"),
    )),
    "furious": Emotion("neg", ("absolutely livid", "shaking with anger"), (
        _t("A driver ran a red light and hit my car, then told the police it was my fault.",
           "Now his insurance is refusing to pay and I have a huge bill.",
           "being blamed for the accident", "someone backed into me and lied to the insurance company"),
        _t("My landlord kept my whole security deposit for damage that was there when I moved in.",
           "I have photos from move-in day but he won't even look at them.",
           "losing your deposit like that", "a landlord tried to charge me for a window I never touched"),
        _t("Someone stole my bike from right outside my front door.",
           "The camera caught their face and the police still say they can't do anything.",
           "having your bike stolen", "my scooter was stolen from my building's garage"),
    )),
    "guilty": Emotion("neg", ("weighed down by guilt", "like a terrible person"), (
        _t("I ate the last piece of my roommate's birthday cake without asking.",
           "She had been saving it and she looked so sad when she found the empty box.",
           "eating the cake", "I finished my sister's leftovers that she was saving"),
        _t("I haven't visited my father in the care home for over a month.",
           "Work has been busy, but honestly I avoid it because it is hard to see him like that.",
           "not visiting your father", "my mom was in a care home and I stayed away for weeks"),
        _t("I broke my neighbor's garden gnome with a soccer ball and never told her.",
           "She put up a sign asking who did it and I walked right past it.",
           "keeping that secret from your neighbor", "I cracked a friend's phone screen and blamed it on the dog"),
    )),
    "jealous": Emotion("neg", ("left behind", "envious and bitter"), (
        _t("My best friend just bought a house and I am still renting a tiny studio.",
           "I am happy for her but I can't stop comparing our lives.",
           "watching your friend buy a house", "all my friends started buying homes before I could"),
        _t("My coworker got a huge raise for doing half the work I do.",
           "He spends most of the day chatting but he plays golf with the boss.",
           "your coworker getting that raise", "a colleague got a bonus I felt I had earned"),
        _t("My brother always gets praised by my parents no matter what he does.",
           "I graduated with honors and they barely mentioned it at dinner.",
           "always being compared to your brother", "my parents seemed to notice only my older sister"),
    )),
    "lonely": Emotion("neg", ("isolated", "invisible"), (
        _t("I moved to a new city for work and I don't know a single person here.",
           "Weekends are the worst because I don't talk to anyone from Friday to Monday.",
           "the move to a new city", "I moved abroad for a job"),
        _t("All my college friends got married and we hardly talk anymore.",
           "Our group chat used to be busy every day and now it is silent.",
           "drifting apart from your friends", "my friend group scattered after graduation"),
        _t("I spent my birthday alone this year.",
           "My phone didn't ring once and I ended up going to bed early.",
           "spending your birthday alone", "I spent a holiday by myself in an empty dorm"),
    )),
    "sad": Emotion("neg", ("heartbroken", "really low"), (
        _t("My best friend is moving overseas next week.",
           "We have seen each other almost every day since we were kids.",
           "your best friend moving away", "my closest friend moved to another country"),
        _t("I had to give my cat up for adoption because my new landlord doesn't allow pets.",
           "I keep looking at her pictures and wondering if she is okay.",
           "giving up your cat", "I had to rehome my dog when I moved"),
        _t("My favorite teacher from high school passed away.",
           "She was the one who convinced me to apply to college.",
           "losing your favorite teacher", "a mentor of mine passed away"),
    )),
    "terrified": Emotion("neg", ("frozen with fear", "completely panicked"), (
        _t("Our house shook for almost a minute during the earthquake last night.",
           "Pictures fell off the walls and my kids were screaming in the hallway.",
           "going through the earthquake", "I lived through a big storm that tore off part of our roof"),
        _t("My toddler wandered off at the fair and I couldn't find him for twenty minutes.",
           "A security guard finally found him by the pony rides, eating popcorn.",
           "losing sight of your son at the fair", "my daughter slipped away from me at a crowded beach"),
        _t("A car swerved into my lane on the highway and missed me by inches.",
           "I had to pull over at the next exit because I couldn't stop shaking.",
           "that near miss on the highway", "a truck nearly ran me off the road"),
    )),
    "anticipating": Emotion("pos", ("buzzing with excitement", "impatient in the best way"), (
        _t("My favorite band is playing a show in my town next month.",
           "I bought tickets the minute they went on sale and I have been playing their albums nonstop.",
           "the concert next month", "I finally got to see my favorite band live"),
        _t("We are leaving for our first family vacation in five years on Saturday.",
           "The kids have packed their bags three times already.",
           "the trip on Saturday", "my family took our first big trip together"),
        _t("My sister is due to have her baby any day now.",
           "I keep my phone on loud all night just in case she calls.",
           "the baby arriving any day now", "my first niece was born"),
    )),
    "caring": Emotion("pos", ("protective and tender", "full of love"), (
        _t("My elderly neighbor broke her hip so I have been bringing her groceries and meals.",
           "She tells me stories about her late husband while I put things away.",
           "looking after your neighbor", "I helped an older neighbor after her fall"),
        _t("I stayed up all night with my son while he had a high fever.",
           "He finally fell asleep on my shoulder around four in the morning.",
           "taking care of your son through that fever", "I sat up all night with my daughter when she had the flu"),
        _t("I started volunteering at an animal shelter on weekends.",
           "There is one shy old dog who finally lets me pet him.",
           "volunteering at the shelter", "I volunteered at a food bank for a year"),
    )),
    "confident": Emotion("pos", ("self-assured", "ready for anything"), (
        _t("I have studied every night for a month and I feel ready for my final exam.",
           "I even took three practice tests and aced all of them.",
           "walking into that exam", "I went into my licensing exam after months of prep"),
        _t("I finally signed up for my first half marathon.",
           "My training runs have been going great and my knee feels strong.",
           "the half marathon", "I ran my first ten mile race"),
        _t("I pitched my business idea to investors today and I think I nailed it.",
           "They asked tough questions and I had an answer ready for every one.",
           "the pitch to those investors", "I presented my startup at a local competition"),
    )),
    "content": Emotion("pos", ("at peace", "calm and settled"), (
        _t("I spent the whole Sunday reading on my porch with a cup of tea.",
           "No plans, no phone, just the sound of the rain.",
           "a slow Sunday like that", "I took a quiet weekend at a lake cabin"),
        _t("After years of moving around, I finally feel at home in my little apartment.",
           "I know my neighbors and the baker down the street knows my order.",
           "feeling settled in your apartment", "I finally settled into a town after moving a lot"),
        _t("My garden finally produced its first tomatoes this summer.",
           "I made a salad with them last night and it was the best thing I have eaten in ages.",
           "your first harvest from the garden", "I grew my first batch of peppers on my balcony"),
    )),
    "excited": Emotion("pos", ("over the moon", "thrilled to bits"), (
        _t("I just got accepted into the graduate program I applied to!",
           "It has been my dream school since I was sixteen.",
           "getting into the program", "I got my acceptance letter for nursing school"),
        _t("We are adopting a puppy this weekend!",
           "I already bought a little bed and way too many toys.",
           "bringing the puppy home", "we brought home our first dog"),
        _t("I booked a trip to Japan for next spring.",
           "I have wanted to see the cherry blossoms my whole life.",
           "the trip to Japan", "I finally took my dream trip to Italy"),
    )),
    "faithful": Emotion("pos", ("loyal and steady", "deeply committed"), (
        _t("I have been married for twenty-five years and I have never once doubted my wife.",
           "We have been through job losses and illness and we always stuck together.",
           "twenty-five years of marriage", "I reached my twentieth wedding anniversary"),
        _t("I have gone to the same church every Sunday since I was a child.",
           "Even when I moved away, I drove back an hour each week.",
           "keeping that tradition going", "I kept up a weekly tradition with my grandfather for years"),
        _t("I stayed with the same small company for fifteen years even when bigger offers came.",
           "The owner took a chance on me when nobody else would.",
           "staying loyal to that company", "I turned down a bigger offer to stay with my first boss"),
    )),
    "grateful": Emotion("pos", ("deeply thankful", "incredibly lucky"), (
        _t("A stranger paid for my groceries when my card was declined.",
           "She just smiled and told me to pass it on someday.",
           "that stranger's kindness", "a stranger covered my bus fare when I was short"),
        _t("My coworkers covered my shifts for two weeks while my mom was in the hospital.",
           "They never once made me feel like a burden.",
           "your coworkers stepping up like that", "my team covered for me during a family emergency"),
        _t("My parents helped me pay off the last of my student loans.",
           "They have been saving for years and never told me.",
           "your parents helping with the loans", "my uncle helped me buy my first car"),
    )),
    "hopeful": Emotion("pos", ("cautiously optimistic", "hopeful about the future"), (
        _t("My mom's latest scan showed the treatment is working.",
           "The doctors say there is a real chance of remission this time.",
           "the good news from the scan", "my dad got a good report after his treatment"),
        _t("I applied for my dream job and they called me back for a second interview.",
           "They said they would decide by the end of the week.",
           "the second interview", "I got called back for a job I really wanted"),
        _t("My brother has been sober for six months now.",
           "We had dinner together last night and it felt like old times.",
           "your brother's recovery", "my cousin got through rehab"),
    )),
    "impressed": Emotion("pos", ("amazed", "blown away"), (
        _t("My ten-year-old built a working robot from a kit all by himself.",
           "He even programmed it to bring me a cup from the kitchen.",
           "what your son built", "my niece won her school science fair"),
        _t("My grandfather learned to use a computer at eighty-five.",
           "Now he emails me every morning with news from his garden.",
           "your grandfather learning something new", "my grandmother taught herself to paint in her seventies"),
        _t("My friend ran a full marathon only a year after her knee surgery.",
           "She finished faster than anyone in our running club.",
           "your friend's comeback", "I watched my brother finish his first triathlon"),
    )),
    "joyful": Emotion("pos", ("beaming", "happier than ever"), (
        _t("My daughter took her first steps today!",
           "She walked right into my arms and laughed the whole time.",
           "seeing her first steps", "my son took his first steps"),
        _t("My best friend surprised me by flying in for my birthday.",
           "I opened the door and she was standing there with a cake.",
           "the birthday surprise", "my sister showed up unannounced for my birthday"),
        _t("I finally paid off my credit card debt.",
           "I have been chipping away at it for four years.",
           "being debt free", "I paid off my car loan"),
    )),
    "nostalgic": Emotion("pos", ("wistful", "warm and nostalgic"), (
        _t("I found a box of old photos from my childhood summers at the lake.",
           "There is one of my dad teaching me to fish that I had completely forgotten about.",
           "looking through those old photos", "I found my old school yearbooks in the attic"),
        _t("I heard a song on the radio that my high school friends and I used to sing in the car.",
           "I had to pull over because I was smiling so much.",
           "hearing that song again", "I heard the song from my prom on the radio"),
        _t("I walked past my old elementary school today.",
           "The playground is different but the big oak tree is still there.",
           "visiting your old school", "I drove by the house I grew up in"),
    )),
    "prepared": Emotion("pos", ("ready and organized", "calm and in control"), (
        _t("Our area is expecting a big storm so I stocked up on water, food, and batteries.",
           "I even checked on my neighbors to make sure they have what they need.",
           "getting ready for the storm", "I prepared for a hurricane a few years ago"),
        _t("I have my presentation slides done a full week early.",
           "I practiced in front of my roommate twice and timed every section.",
           "being ready for the presentation", "I prepared for my thesis defense"),
        _t("We finished setting up the nursery a month before the due date.",
           "The hospital bag is packed and sitting by the door.",
           "getting everything ready for the baby", "we got ready for our first child"),
    )),
    "proud": Emotion("pos", ("incredibly proud", "proud beyond words"), (
        _t("My son graduated from college as the first person in our family to do it.",
           "I cried through the whole ceremony.",
           "watching your son graduate", "my daughter graduated from high school"),
        _t("I ran my first 5k after losing forty pounds this year.",
           "A year ago I couldn't walk up the stairs without getting winded.",
           "your first 5k", "I finished my first race after getting back in shape"),
        _t("My little sister got her first paycheck from a job she earned on her own.",
           "She called me right away to tell me she was buying dinner.",
           "your sister's first paycheck", "my younger brother landed his first job"),
    )),
    "sentimental": Emotion("pos", ("tender and nostalgic", "deeply touched"), (
        _t("I found my late grandmother's recipe book while cleaning out the kitchen.",
           "Her handwriting is in the margins next to every recipe.",
           "finding your grandmother's recipe book", "I found a letter my grandfather wrote to me"),
        _t("My son outgrew his baby blanket and I couldn't bring myself to give it away.",
           "I folded it up and put it in a box with his first shoes.",
           "holding on to the blanket", "I kept my daughter's first pair of shoes"),
        _t("We sold the car my husband and I drove on our honeymoon.",
           "I sat in it for a while before handing over the keys.",
           "letting go of that car", "I sold my first car after twelve years"),
    )),
    "surprised": Emotion("pos", ("caught completely off guard", "stunned in the best way"), (
        _t("My coworkers threw me a surprise party for my tenth work anniversary.",
           "I had no idea, I walked into the break room and everyone jumped out.",
           "the surprise party", "my friends threw me a surprise party"),
        _t("I won a raffle at the grocery store and the prize was a weekend getaway.",
           "I don't even remember entering it.",
           "winning that raffle", "I won a radio contest"),
        _t("My old college roommate showed up at my door after ten years.",
           "He was in town for work and found my address through a friend.",
           "your roommate turning up like that", "an old friend called me out of the blue after years"),
    )),
    "trusting": Emotion("pos", ("safe and secure", "at ease"), (
        _t("I let my neighbor keep a spare key to my house while I am traveling.",
           "She waters my plants and feeds my fish and I never worry about it.",
           "having a neighbor you can rely on", "I left my house keys with a friend for a whole summer"),
        _t("I told my best friend a secret I have never told anyone.",
           "She just listened and hugged me, and I know it will never go further.",
           "opening up to your friend", "I confided in my sister about something I had kept hidden"),
        _t("I let my teenage daughter take the car for her first solo trip to her friend's house.",
           "She texted me when she arrived, just like she promised.",
           "letting your daughter take the car", "my parents let me borrow the car for the first time"),
    )),
}  # fmt: skip

# Response blocks. Placeholders: {feel} (one of the emotion's feelings), {about}, {mine} (from the topic).
ER_STRONG: Final[dict[Valence, tuple[str, ...]]] = {
    "neg": (
        "I'm so sorry you're going through this, that sounds heartbreaking.",
        "Oh no, I am so sorry. My heart really goes out to you.",
        "That sounds incredibly painful, and I'm so sorry you are dealing with it.",
        "I feel awful hearing this, you really don't deserve it.",
        "That must hurt so much, I'm really sorry.",
        "I'm so sorry, that sounds absolutely awful.",
        "My heart sank reading this. I'm so sorry.",
        "That sounds frightening and exhausting, I'm so sorry.",
        "I'm really sad to hear this, it sounds so hard.",
        "That breaks my heart, I'm so sorry you have to deal with this.",
        "Sending you a big hug, this sounds so painful.",
        "That is genuinely awful, and I'm so sorry it happened to you.",
    ),
    "pos": (
        "That's wonderful, I'm so happy for you!",
        "Oh wow, this made my whole day, I'm thrilled for you!",
        "What a beautiful thing, I'm genuinely so happy for you.",
        "I love this so much, it honestly warms my heart.",
        "This put a huge smile on my face, I'm so happy for you.",
        "How lovely, I'm really delighted for you!",
        "That is fantastic news and I'm so excited for you!",
        "My heart is so full reading this, I'm really happy for you.",
        "I'm absolutely thrilled for you, this is so great.",
        "This is the best thing I've read all week, I'm so glad for you!",
    ),
}
ER_WEAK: Final[dict[Valence, tuple[str, ...]]] = {
    "neg": ("That's rough.", "Oh man.", "That sucks.", "Yikes.", "That's too bad.", "Ouch.", "Not fun.",
            "That's a shame.", "Oof.", "Bummer."),
    "pos": ("Nice.", "Cool.", "Oh wow.", "Neat.", "That's good.", "Sounds fun.", "Good for you.", "Oh nice.",
            "Sweet.", "Not bad."),
}  # fmt: skip
_IP_STRONG_SHARED: Final = (
    "I went through something similar when {mine}, and I remember feeling {feel}.",
    "It makes sense that {about} would leave you feeling {feel}.",
    "Something like that happened to me when {mine}, and I felt {feel} for a long time afterwards.",
    "Reading this took me right back to when {mine}, because I felt {feel} too.",
)
IP_STRONG: Final[dict[Valence, tuple[str, ...]]] = {
    "neg": (
        *_IP_STRONG_SHARED,
        "When {mine}, I felt {feel} for weeks, so I really get where you are coming from.",
        "I can tell {about} has left you feeling {feel}, and that is completely understandable.",
        "After {mine}, I kept feeling {feel}, so I know how heavy this can be.",
        "Anyone would feel {feel} after {about}, I know I did when {mine}.",
    ),
    "pos": (
        *_IP_STRONG_SHARED,
        "When {mine}, I felt {feel} for days, so I know exactly how big this is for you.",
        "I can tell {about} has you feeling {feel}, and you have earned every bit of it.",
        "After {mine}, I walked around feeling {feel}, so I know this moment well.",
        "Of course you feel {feel} about {about}, I did too when {mine}.",
    ),
}
IP_WEAK: Final = (
    "I understand.", "I get it.", "I know what you mean.", "I can see why.", "I hear you.", "That makes sense.",
    "I see.", "Fair enough.", "I can relate.", "Understandable.",
)  # fmt: skip
EX_STRONG: Final[dict[Valence, tuple[str, ...]]] = {
    "neg": (
        "How have you been coping with {about}?",
        "What has been the hardest part of {about} for you?",
        "How are you feeling about {about} right now?",
        "Do you have someone you can talk to about {about}?",
        "Is {about} keeping you up at night?",
        "What would help you most while you deal with {about}?",
        "How is {about} affecting the rest of your week?",
        "Have you been able to tell anyone how {about} is making you feel?",
    ),
    "pos": (
        "How are you feeling about {about} right now?",
        "What does {about} mean to you?",
        "What part of {about} makes you happiest?",
        "Who was the first person you told about {about}?",
        "How do you plan to celebrate {about}?",
        "How did your family react to {about}?",
        "What has {about} taught you about yourself?",
        "What went through your mind when you thought about {about}?",
    ),
}
EX_WEAK: Final = (
    "What happened?", "What do you mean?", "How come?", "Then what?", "What's going on?",
    "How did that happen?", "And then?", "Can you say more?", "What did you do?", "Why is that?",
)  # fmt: skip
NEUTRAL: Final = (
    "Thanks for posting this.", "Maybe try to get some fresh air today.",
    "Writing things down can help sort it out.", "Keep us posted.", "Drink some water and get some rest.",
    "A walk usually clears my head.", "There are some good threads about this in the sidebar.",
    "Good luck with everything.", "Try to take it one day at a time.", "A to-do list might help.",
    "Remember to eat something today.", "You could ask a friend to come along.",
)  # fmt: skip

# Speaker and seeker turns around the topic text.
OPENERS: Final[dict[Valence, tuple[str, ...]]] = {
    "neg": ("", "", "Ugh. ", "I need to vent. ", "So, ", "Honestly, ", "Can I tell you something? "),
    "pos": ("", "", "Guess what? ", "Okay, so ", "Big news! ", "You won't believe it, ", "Hey! "),
}
DETAIL_LEADS: Final = ("", "", "Yeah, ", "Well, ", "Honestly, ", "The thing is, ")
SPEAKER_CLOSINGS: Final[dict[Valence, tuple[str, ...]]] = {
    "neg": (
        "Thanks, it helps to talk about it.", "Yeah, I just have to get through it I guess.",
        "I appreciate you listening.", "I know, I'm trying to stay positive.", "It means a lot that you asked.",
        "I'll try to take it easy this week.",
    ),
    "pos": (
        "Thanks, I'm still smiling about it.", "Yes, I can't wait to tell everyone.",
        "Thank you, it really means a lot.", "I know, I still can't believe it.",
        "Thanks! I'll let you know how it goes.", "Haha yes, I'm enjoying every minute.",
    ),
}  # fmt: skip
SEEKER_CLOSINGS: Final[dict[Valence, tuple[str, ...]]] = {
    "neg": (
        "I don't know what to do anymore.", "Has anyone else been through something like this?",
        "I just needed to get this off my chest.", "Any advice would help.", "I can't stop thinking about it.",
        "Sorry for the long post, I just have nobody else to tell.",
    ),
    "pos": (
        "I just had to tell someone!", "Has anyone else felt this way?", "I'm still smiling thinking about it.",
        "Sorry, I just needed to share this somewhere.", "I don't even know how to describe it.",
    ),
}  # fmt: skip
