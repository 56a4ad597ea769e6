"""A deterministic, phonetically rich English sentence pool for the synthetic corpus.

Hand-written lines (pangrams, questions, exclamations, game NPC barks) plus template
sentences filled from word lists chosen for coverage: many bilabials (/p b m/), labiodentals
(/f v/), rounded vowels and /w/ (the visemes a face model most visibly gets wrong), dental
fricatives, affricates and every vowel. The pool has no randomness: same list, same order,
every run; the corpus generator decides which sentences are held out.
"""

from __future__ import annotations

import itertools

HANDWRITTEN: tuple[str, ...] = (
    "The quick brown fox jumps over the lazy dog.",
    "Pack my box with five dozen liquor jugs.",
    "How vexingly quick daft zebras jump!",
    "Sphinx of black quartz, judge my vow.",
    "Bright vixens jump; dozy fowl quack.",
    "Amazingly few discotheques provide jukeboxes.",
    "Peter Piper picked a peck of pickled peppers.",
    "Bobby brought a big blue balloon to the boat.",
    "My mom made marmalade from maple and plums.",
    "Whose shoes are these, and who took my blue boots?",
    "We were worried when the wind woke the whole town.",
    "Five funny fellows fixed the fence for free.",
    "Very few vans have velvet seats.",
    "Think through the theory three more times.",
    "Those other brothers rather like the weather.",
    "Charlie chose cheap cheese and a cherry juice.",
    "George judged the jury with a gentle voice.",
    "She sells sea shells by the sea shore.",
    "The measure of a treasure is the pleasure it brings.",
    "Look out! The bridge is about to break!",
    "Hey, you there! Stop right where you are.",
    "Welcome, traveller. The inn is warm tonight.",
    "I used to be an adventurer like you.",
    "Need a weapon? Best blades in the kingdom.",
    "Move along, nothing to see here.",
    "The mayor wants to see you. Better hurry.",
    "Watch your back out there, friend.",
    "By my beard, that was a mighty blow!",
    "Buy something or move on, I have mouths to feed.",
    "Mmm, fresh bread, baked this morning.",
    "Oh no, not again!",
    "Wow, that was brilliant!",
    "Really? You would do that for me?",
    "Who goes there? Show yourself!",
    "Please, be quiet, the baby is sleeping.",
    "Would you like some more soup?",
    "Thank you very much, that means a lot.",
    "Could you pass the butter, please?",
    "Why would anybody put a boot in the oven?",
    "Maybe we should move before the moon rises.",
    "Our boat floated slowly down the smooth river.",
    "Bring me the map and the brass compass.",
    "Pull the lever, then push the blue button.",
    "Apple pie with whipped cream is my favourite.",
    "Do you remember the music from the old movie?",
    "The museum opens at nine on Tuesday.",
    "Good morning! Did you sleep well?",
    "Keep calm and carry on.",
    "Everybody wants to rule the world.",
    "It is a beautiful day to be outside.",
    "I am not going back to that awful place.",
    "Ouch, my foot! Who left this box here?",
    "Well, well, well. Look who finally showed up.",
    "Quiet now, the guards will hear us.",
    "Run! They are right behind us!",
    "I have a bad feeling about this.",
    "Your bravery will be remembered.",
    "Bob bought a bottle of bubbly for the party.",
    "A big black bug bit a big black bear.",
    "Mama made me mash my M and Ms.",
    "Fifty five fluffy pillows fell off the van.",
    "Who knew the blue moon would loom so soon?",
    "Wherever we wander, we will wonder why.",
    "Oh, you poor thing, you must be frozen.",
    "Hmm, let me think about it for a moment.",
    "Yes! We won the whole tournament!",
    "No, absolutely not. Put it back.",
    "The boy with the yellow balloon ran home.",
    "Ruth threw the ball through the open window.",
    "My job is to make the map better.",
    "Please remember to buy milk, butter, and bread.",
    "Is it true that you beat the champion?",
    "Pumpkin soup warms the bones in winter.",
    "Stop, thief! Bring back my purse!",
    "Beware the marsh, it swallows the unwary.",
    "Move the boxes up the stairs by five.",
    "Two pounds of fish, please, and a few potatoes.",
    "Boom! The whole wall blew apart.",
    "Whoa, whoa, slow down, buddy.",
    "Ahoy! Prepare to board the ship!",
)

_SUBJECTS: tuple[str, ...] = (
    "My brother",
    "The blue robot",
    "Bob the baker",
    "Our old pilot",
    "The woman in the boat",
    "Mom",
    "The famous poet",
    "A very brave puppy",
    "The music teacher",
    "Every farmer",
    "The moody wizard",
    "Paula",
    "The two boys",
    "Ruth",
    "A few people",
    "The fisherman",
)
_VERBS: tuple[str, ...] = (
    "brought",
    "moved",
    "wants",
    "found",
    "pushed",
    "bought",
    "will paint",
    "forgot",
    "loves",
    "threw",
    "broke",
    "borrowed",
    "should move",
    "fixed",
    "might buy",
    "would love",
)
_OBJECTS: tuple[str, ...] = (
    "a bowl of soup",
    "the purple umbrella",
    "five bubble maps",
    "the broom by the pool",
    "a warm woollen blanket",
    "the moving boxes",
    "a book about whales",
    "some blueberry muffins",
    "the big brass bell",
    "two pairs of boots",
    "the old phone",
    "a few fresh apples",
    "the velvet pillow",
    "the map of the moon",
    "a huge pumpkin",
    "our mother's piano",
)
_ENDINGS: tuple[str, ...] = (
    "",
    " before noon",
    " this morning",
    " to the museum",
    " by the bay",
    " on Wednesday",
    " with a smile",
    " over the bridge",
    " for the boss",
    " in the warm room",
    " without a word",
    " at the pub",
)
_QUESTIONS: tuple[str, ...] = (
    "Why did {s} {v} {o}?",
    "Where did you put {o}?",
    "Would you bring me {o}?",
    "Who will pay for {o}?",
    "Do you remember {o}?",
)
_EXCLAIMS: tuple[str, ...] = (
    "Wow, {o}!",
    "Look at {o}!",
    "Oh my, {s} is back!",
    "Bravo, {s}!",
    "Move {o}, quickly!",
)
_BASE_VERB = {
    "brought": "bring",
    "moved": "move",
    "wants": "want",
    "found": "find",
    "pushed": "push",
    "bought": "buy",
    "will paint": "paint",
    "forgot": "forget",
    "loves": "love",
    "threw": "throw",
    "broke": "break",
    "borrowed": "borrow",
    "should move": "move",
    "fixed": "fix",
    "might buy": "buy",
    "would love": "love",
}


def _lower_first(s: str) -> str:
    return s if s.startswith(("Mom", "Bob", "Paula", "Ruth")) else s[0].lower() + s[1:]


def _templated() -> list[str]:
    """Statements, questions and exclamations from the word lists, in a fixed interleaved order."""
    out: list[str] = []
    n_s, n_v, n_o, n_e = len(_SUBJECTS), len(_VERBS), len(_OBJECTS), len(_ENDINGS)
    # Walk the lists with coprime strides so neighbouring sentences share few words.
    for k in range(360):
        s = _SUBJECTS[k % n_s]
        v = _VERBS[(k * 5 + k // n_s) % n_v]
        o = _OBJECTS[(k * 7 + 3 + k // n_v) % n_o]
        e = _ENDINGS[(k * 5 + k // 7) % n_e]
        if k % 6 == 4:
            q = _QUESTIONS[(k // 6) % len(_QUESTIONS)]
            out.append(q.format(s=_lower_first(s), v=_BASE_VERB[v], o=o))
        elif k % 6 == 5:
            x = _EXCLAIMS[(k // 6) % len(_EXCLAIMS)]
            out.append(x.format(s=_lower_first(s), o=o))
        else:
            out.append(f"{s} {v} {o}{e}.")
    return out


def sentence_pool() -> list[str]:
    """Every sentence, deduplicated, in a fixed order (several hundred)."""
    seen: set[str] = set()
    pool: list[str] = []
    for line in itertools.chain(HANDWRITTEN, _templated()):
        if line not in seen:
            seen.add(line)
            pool.append(line)
    return pool
