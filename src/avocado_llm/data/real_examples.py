"""Real-world prompt sources of ``recipes/real-small.yaml``: ``avocado data real-example``.

The tiny world's fictional facts mean nothing to real teachers (SmolLM2-135M-Instruct scored
0.3% on them), so "beat each teacher" needs questions real small models get *partly* right.
Avocado writes them itself, with references, from the word lists below (common knowledge,
checked by hand; nothing downloaded). Three JSONL sources, each a ``prompt`` and a
``reference``, each with its verifier:

- ``knowledge.jsonl`` (``short``): capitals, the country of a capital, the continent of a
  country, the colour of common things; "Answer with one word." (or the name);
- ``words.jsonl`` (``short``): plurals, opposites and past tenses of common English words;
- ``numbers.jsonl`` (``number``): short arithmetic in words ("What is seven plus eight?"),
  legs of animals and of small herds ("How many legs do 3 spiders have?"), everyday units
  ("How many minutes are in 4 hours?") and letters in a word.

Every row is a distinct question (a source splits by a hash of the normalised prompt, so a
question never sits in both splits); ``heldout_fraction`` in the recipe gives each source at
least 200 held-out prompts (:data:`HELDOUT`). ``avocado data real-example --out DIR`` writes
the same bytes on every run.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path
from typing import Any

SEED = 22
FILES = ("knowledge.jsonl", "words.jsonl", "numbers.jsonl")
HELDOUT = {"knowledge": 0.55, "words": 0.55, "numbers": 0.6}
"""The ``heldout_fraction`` each source needs for >= 200 held-out prompts (recipe's values)."""


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


# (country, capital, continent)
COUNTRIES = (
    ("France", "Paris", "Europe"), ("Germany", "Berlin", "Europe"), ("Italy", "Rome", "Europe"),
    ("Spain", "Madrid", "Europe"), ("Portugal", "Lisbon", "Europe"),
    ("United Kingdom", "London", "Europe"), ("Ireland", "Dublin", "Europe"),
    ("Netherlands", "Amsterdam", "Europe"), ("Belgium", "Brussels", "Europe"),
    ("Austria", "Vienna", "Europe"), ("Switzerland", "Bern", "Europe"),
    ("Poland", "Warsaw", "Europe"), ("Czech Republic", "Prague", "Europe"),
    ("Hungary", "Budapest", "Europe"), ("Greece", "Athens", "Europe"),
    ("Sweden", "Stockholm", "Europe"), ("Norway", "Oslo", "Europe"),
    ("Denmark", "Copenhagen", "Europe"), ("Finland", "Helsinki", "Europe"),
    ("Iceland", "Reykjavik", "Europe"), ("Romania", "Bucharest", "Europe"),
    ("Bulgaria", "Sofia", "Europe"), ("Serbia", "Belgrade", "Europe"),
    ("Croatia", "Zagreb", "Europe"), ("Ukraine", "Kyiv", "Europe"),
    ("Russia", "Moscow", "Europe"), ("Estonia", "Tallinn", "Europe"),
    ("Latvia", "Riga", "Europe"), ("Lithuania", "Vilnius", "Europe"),
    ("Slovakia", "Bratislava", "Europe"), ("Slovenia", "Ljubljana", "Europe"),
    ("Albania", "Tirana", "Europe"), ("Malta", "Valletta", "Europe"),
    ("Luxembourg", "Luxembourg", "Europe"), ("Belarus", "Minsk", "Europe"),
    ("Japan", "Tokyo", "Asia"), ("China", "Beijing", "Asia"), ("India", "New Delhi", "Asia"),
    ("South Korea", "Seoul", "Asia"), ("North Korea", "Pyongyang", "Asia"),
    ("Thailand", "Bangkok", "Asia"), ("Vietnam", "Hanoi", "Asia"),
    ("Indonesia", "Jakarta", "Asia"), ("Philippines", "Manila", "Asia"),
    ("Malaysia", "Kuala Lumpur", "Asia"), ("Singapore", "Singapore", "Asia"),
    ("Pakistan", "Islamabad", "Asia"), ("Bangladesh", "Dhaka", "Asia"),
    ("Nepal", "Kathmandu", "Asia"), ("Sri Lanka", "Colombo", "Asia"),
    ("Afghanistan", "Kabul", "Asia"), ("Iran", "Tehran", "Asia"), ("Iraq", "Baghdad", "Asia"),
    ("Saudi Arabia", "Riyadh", "Asia"), ("Israel", "Jerusalem", "Asia"),
    ("Jordan", "Amman", "Asia"), ("Lebanon", "Beirut", "Asia"), ("Syria", "Damascus", "Asia"),
    ("Turkey", "Ankara", "Asia"), ("Qatar", "Doha", "Asia"), ("Kuwait", "Kuwait City", "Asia"),
    ("Oman", "Muscat", "Asia"), ("Yemen", "Sanaa", "Asia"), ("Mongolia", "Ulaanbaatar", "Asia"),
    ("Kazakhstan", "Astana", "Asia"), ("Uzbekistan", "Tashkent", "Asia"),
    ("Cambodia", "Phnom Penh", "Asia"), ("Laos", "Vientiane", "Asia"),
    ("Myanmar", "Naypyidaw", "Asia"), ("Egypt", "Cairo", "Africa"),
    ("Kenya", "Nairobi", "Africa"), ("Nigeria", "Abuja", "Africa"),
    ("Ethiopia", "Addis Ababa", "Africa"), ("Ghana", "Accra", "Africa"),
    ("Morocco", "Rabat", "Africa"), ("Algeria", "Algiers", "Africa"),
    ("Tunisia", "Tunis", "Africa"), ("Libya", "Tripoli", "Africa"),
    ("Sudan", "Khartoum", "Africa"), ("Uganda", "Kampala", "Africa"),
    ("Tanzania", "Dodoma", "Africa"), ("Rwanda", "Kigali", "Africa"),
    ("Senegal", "Dakar", "Africa"), ("Mali", "Bamako", "Africa"),
    ("Angola", "Luanda", "Africa"), ("Zambia", "Lusaka", "Africa"),
    ("Zimbabwe", "Harare", "Africa"), ("Mozambique", "Maputo", "Africa"),
    ("Madagascar", "Antananarivo", "Africa"), ("Somalia", "Mogadishu", "Africa"),
    ("Cameroon", "Yaounde", "Africa"), ("Botswana", "Gaborone", "Africa"),
    ("Namibia", "Windhoek", "Africa"), ("United States", "Washington", "North America"),
    ("Canada", "Ottawa", "North America"), ("Mexico", "Mexico City", "North America"),
    ("Cuba", "Havana", "North America"), ("Jamaica", "Kingston", "North America"),
    ("Guatemala", "Guatemala City", "North America"), ("Panama", "Panama City", "North America"),
    ("Costa Rica", "San Jose", "North America"), ("Honduras", "Tegucigalpa", "North America"),
    ("Nicaragua", "Managua", "North America"), ("Haiti", "Port-au-Prince", "North America"),
    ("Brazil", "Brasilia", "South America"), ("Argentina", "Buenos Aires", "South America"),
    ("Chile", "Santiago", "South America"), ("Peru", "Lima", "South America"),
    ("Colombia", "Bogota", "South America"), ("Venezuela", "Caracas", "South America"),
    ("Ecuador", "Quito", "South America"), ("Uruguay", "Montevideo", "South America"),
    ("Paraguay", "Asuncion", "South America"), ("Bolivia", "Sucre", "South America"),
    ("Australia", "Canberra", "Oceania"), ("New Zealand", "Wellington", "Oceania"),
    ("Fiji", "Suva", "Oceania"), ("Papua New Guinea", "Port Moresby", "Oceania"),
    ("Samoa", "Apia", "Oceania"), ("Tonga", "Nukualofa", "Oceania"),
)  # fmt: skip

COLOURS = (
    ("a ripe banana", "yellow"), ("grass", "green"), ("a clear daytime sky", "blue"),
    ("snow", "white"), ("coal", "black"), ("a ripe tomato", "red"), ("an orange", "orange"),
    ("a lemon", "yellow"), ("milk", "white"), ("a strawberry", "red"), ("a carrot", "orange"),
    ("a lime", "green"), ("a fire truck", "red"), ("a polar bear's fur", "white"),
    ("a crow", "black"), ("chocolate", "brown"), ("an eggplant", "purple"),
    ("a flamingo", "pink"), ("a pumpkin", "orange"), ("a cucumber", "green"),
    ("the sun in a child's drawing", "yellow"), ("a school bus in the United States", "yellow"),
    ("blood", "red"), ("a lettuce leaf", "green"), ("charcoal", "black"),
    ("a raven", "black"), ("the ocean on a sunny day", "blue"), ("a swan", "white"),
    ("a cherry", "red"), ("a pea", "green"), ("cocoa powder", "brown"), ("a plum", "purple"),
    ("a blueberry", "blue"), ("a frog", "green"), ("a tiger's stripes", "black"),
    ("a panda's ears", "black"), ("a canary", "yellow"), ("a ruby", "red"),
    ("an emerald", "green"), ("a sapphire", "blue"), ("an egg yolk", "yellow"),
    ("cotton", "white"), ("a stop sign", "red"), ("a zebra's stripes", "black"),
)  # fmt: skip

PLURALS = (
    ("child", "children"), ("mouse", "mice"), ("foot", "feet"), ("tooth", "teeth"),
    ("goose", "geese"), ("man", "men"), ("woman", "women"), ("person", "people"),
    ("ox", "oxen"), ("cactus", "cacti"), ("knife", "knives"), ("leaf", "leaves"),
    ("wolf", "wolves"), ("half", "halves"), ("life", "lives"), ("wife", "wives"),
    ("shelf", "shelves"), ("loaf", "loaves"), ("calf", "calves"), ("thief", "thieves"),
    ("potato", "potatoes"), ("tomato", "tomatoes"), ("hero", "heroes"), ("echo", "echoes"),
    ("city", "cities"), ("baby", "babies"), ("lady", "ladies"), ("party", "parties"),
    ("story", "stories"), ("country", "countries"), ("family", "families"), ("fly", "flies"),
    ("berry", "berries"), ("cherry", "cherries"), ("puppy", "puppies"), ("box", "boxes"),
    ("fox", "foxes"), ("bus", "buses"), ("dish", "dishes"), ("church", "churches"),
    ("brush", "brushes"), ("watch", "watches"), ("glass", "glasses"), ("class", "classes"),
    ("kiss", "kisses"), ("wish", "wishes"), ("match", "matches"), ("beach", "beaches"),
    ("bench", "benches"), ("sandwich", "sandwiches"), ("cat", "cats"), ("dog", "dogs"),
    ("book", "books"), ("tree", "trees"), ("car", "cars"), ("house", "houses"),
    ("apple", "apples"), ("chair", "chairs"), ("table", "tables"), ("bird", "birds"),
    ("horse", "horses"), ("river", "rivers"), ("window", "windows"), ("flower", "flowers"),
    ("boy", "boys"), ("girl", "girls"), ("key", "keys"), ("day", "days"), ("toy", "toys"),
    ("monkey", "monkeys"), ("sheep", "sheep"), ("deer", "deer"), ("fish", "fish"),
    ("moose", "moose"), ("series", "series"), ("species", "species"),
    ("crisis", "crises"), ("analysis", "analyses"), ("thesis", "theses"),
    ("phenomenon", "phenomena"), ("criterion", "criteria"), ("nucleus", "nuclei"),
    ("fungus", "fungi"), ("radius", "radii"), ("louse", "lice"), ("die", "dice"),
    ("penny", "pennies"), ("army", "armies"), ("body", "bodies"), ("lily", "lilies"),
    ("hobby", "hobbies"), ("spy", "spies"), ("copy", "copies"), ("ray", "rays"),
    ("tax", "taxes"), ("dress", "dresses"), ("bush", "bushes"), ("peach", "peaches"),
    ("lunch", "lunches"), ("inch", "inches"), ("coach", "coaches"), ("hoof", "hooves"),
    ("scarf", "scarves"), ("elf", "elves"), ("self", "selves"), ("volcano", "volcanoes"),
    ("mosquito", "mosquitoes"), ("piano", "pianos"), ("photo", "photos"), ("zoo", "zoos"),
    ("radio", "radios"), ("kangaroo", "kangaroos"), ("video", "videos"), ("roof", "roofs"),
    ("chief", "chiefs"), ("belief", "beliefs"), ("cliff", "cliffs"), ("stone", "stones"),
    ("cloud", "clouds"), ("lamp", "lamps"), ("door", "doors"), ("shoe", "shoes"),
    ("pencil", "pencils"), ("garden", "gardens"), ("bridge", "bridges"), ("island", "islands"),
    ("mountain", "mountains"), ("candle", "candles"), ("bottle", "bottles"), ("cup", "cups"),
)  # fmt: skip

OPPOSITES = (
    ("hot", "cold"), ("big", "small"), ("up", "down"), ("fast", "slow"), ("happy", "sad"),
    ("day", "night"), ("open", "closed"),
    ("tall", "short"), ("rich", "poor"), ("full", "empty"),
    ("wet", "dry"), ("early", "late"), ("strong", "weak"), ("thick", "thin"),
    ("loud", "quiet"), ("clean", "dirty"), ("push", "pull"), ("win", "lose"),
    ("buy", "sell"), ("give", "take"), ("inside", "outside"), ("above", "below"),
    ("begin", "end"), ("true", "false"), ("good", "bad"), ("left", "right"),
    ("north", "south"), ("east", "west"), ("alive", "dead"), ("heavy", "light"),
    ("near", "far"), ("first", "last"), ("friend", "enemy"), ("love", "hate"),
    ("question", "answer"), ("sweet", "sour"), ("wide", "narrow"), ("deep", "shallow"),
    ("brave", "cowardly"), ("cheap", "expensive"), ("easy", "difficult"),
    ("entrance", "exit"), ("arrive", "depart"), ("remember", "forget"), ("accept", "reject"),
    ("increase", "decrease"), ("maximum", "minimum"), ("ancient", "modern"),
    ("asleep", "awake"), ("before", "after"), ("black", "white"), ("boy", "girl"),
    ("come", "go"), ("cry", "laugh"), ("enter", "exit"),
    ("float", "sink"), ("found", "lost"), ("guilty", "innocent"), ("healthy", "sick"),
    ("high", "low"), ("king", "queen"), ("noisy", "quiet"), ("polite", "rude"),
    ("public", "private"), ("rough", "smooth"), ("safe", "dangerous"), ("same", "different"),
    ("start", "finish"), ("sunrise", "sunset"), ("tight", "loose"), ("always", "never"),
    ("many", "few"), ("more", "less"), ("summer", "winter"), ("top", "bottom"),
    ("yes", "no"), ("success", "failure"),
)  # fmt: skip

PAST = (
    ("go", "went"), ("eat", "ate"), ("see", "saw"), ("run", "ran"), ("swim", "swam"),
    ("drink", "drank"), ("sing", "sang"), ("write", "wrote"), ("drive", "drove"),
    ("take", "took"), ("give", "gave"), ("come", "came"), ("know", "knew"), ("grow", "grew"),
    ("throw", "threw"), ("fly", "flew"), ("draw", "drew"), ("speak", "spoke"),
    ("break", "broke"), ("choose", "chose"), ("freeze", "froze"), ("wake", "woke"),
    ("buy", "bought"), ("bring", "brought"), ("think", "thought"), ("teach", "taught"),
    ("catch", "caught"), ("fight", "fought"), ("seek", "sought"), ("sleep", "slept"),
    ("keep", "kept"), ("feel", "felt"), ("leave", "left"), ("meet", "met"), ("lose", "lost"),
    ("send", "sent"), ("spend", "spent"), ("build", "built"), ("make", "made"),
    ("say", "said"), ("pay", "paid"), ("tell", "told"), ("sell", "sold"), ("find", "found"),
    ("stand", "stood"), ("understand", "understood"), ("sit", "sat"), ("win", "won"),
    ("begin", "began"), ("ring", "rang"), ("get", "got"), ("forget", "forgot"),
    ("hold", "held"), ("hear", "heard"), ("have", "had"), ("do", "did"), ("be", "was"),
    ("put", "put"), ("cut", "cut"), ("hit", "hit"), ("let", "let"), ("shut", "shut"),
    ("read", "read"), ("ride", "rode"), ("rise", "rose"), ("steal", "stole"),
    ("wear", "wore"), ("tear", "tore"), ("bite", "bit"), ("hide", "hid"), ("fall", "fell"),
    ("feed", "fed"), ("lead", "led"), ("mean", "meant"), ("lend", "lent"), ("bend", "bent"),
    ("walk", "walked"), ("talk", "talked"), ("play", "played"), ("jump", "jumped"),
    ("cook", "cooked"), ("clean", "cleaned"), ("open", "opened"), ("call", "called"),
    ("help", "helped"), ("laugh", "laughed"), ("dance", "danced"), ("smile", "smiled"),
    ("live", "lived"), ("move", "moved"), ("stop", "stopped"), ("plan", "planned"),
    ("carry", "carried"), ("cry", "cried"), ("study", "studied"), ("try", "tried"),
    ("watch", "watched"), ("wash", "washed"), ("visit", "visited"), ("paint", "painted"),
)  # fmt: skip

LEGS = (
    ("spider", "spiders", 8), ("ant", "ants", 6), ("dog", "dogs", 4), ("cat", "cats", 4),
    ("chicken", "chickens", 2), ("duck", "ducks", 2), ("horse", "horses", 4),
    ("cow", "cows", 4), ("bee", "bees", 6), ("beetle", "beetles", 6), ("fly", "flies", 6),
    ("octopus", "octopuses", 8), ("goat", "goats", 4), ("sheep", "sheep", 4),
    ("penguin", "penguins", 2), ("ostrich", "ostriches", 2), ("pig", "pigs", 4),
    ("butterfly", "butterflies", 6), ("lion", "lions", 4), ("elephant", "elephants", 4),
    ("scorpion", "scorpions", 8), ("crab", "crabs", 10), ("snake", "snakes", 0),
    ("fish", "fish", 0), ("owl", "owls", 2), ("kangaroo", "kangaroos", 2),
    ("giraffe", "giraffes", 4), ("mouse", "mice", 4), ("frog", "frogs", 4),
    ("grasshopper", "grasshoppers", 6), ("tick", "ticks", 8), ("parrot", "parrots", 2),
)  # fmt: skip

NUMBER_WORDS = _words(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
    "fifteen sixteen seventeen eighteen nineteen twenty"
)

UNITS = (
    ("minutes", "hour", "hours", 60), ("seconds", "minute", "minutes", 60),
    ("hours", "day", "days", 24), ("days", "week", "weeks", 7), ("months", "year", "years", 12),
    ("centimetres", "metre", "metres", 100), ("metres", "kilometre", "kilometres", 1000),
    ("grams", "kilogram", "kilograms", 1000), ("millimetres", "centimetre", "centimetres", 10),
    ("eggs", "dozen", "dozen", 12), ("years", "decade", "decades", 10),
    ("years", "century", "centuries", 100), ("millilitres", "litre", "litres", 1000),
    ("cents", "dollar", "dollars", 100), ("inches", "foot", "feet", 12),
)  # fmt: skip

SPELL_WORDS = _words(
    "cat dog sun tree house apple water bread river garden window yellow orange banana "
    "pencil school friend summer winter doctor castle rabbit turtle monkey dragon flower "
    "planet rocket guitar violin island forest desert mountain bottle kitchen mirror "
    "pillow button candle letter number animal butter silver purple"
)


def _row(prompt: str, reference: str | int, kind: str) -> dict[str, str]:
    return {"prompt": prompt, "reference": str(reference), "kind": kind}


def knowledge_rows() -> list[dict[str, str]]:
    one = "Answer with the name only."
    rows = []
    for country, capital, continent in COUNTRIES:
        the = "the " if country.startswith(("United", "Czech", "Netherlands", "Philipp")) else ""
        rows.append(_row(f"What is the capital of {the}{country}? {one}", capital, "capital"))
        if capital != country:
            q = f"{capital} is the capital of which country? {one}"
            rows.append(_row(q, country, "country"))
        q = f"On which continent is {the}{country}? {one}"
        rows.append(_row(q, continent, "continent"))
    for thing, colour in COLOURS:
        rows.append(_row(f"What colour is {thing}? Answer with one word.", colour, "colour"))
    return rows


ONE_WAY = frozenset({"small", "short", "light", "thin", "quiet", "slow", "low", "girl", "no"})
"""Words whose opposite has several common answers ("small": big or large): asked only the
other way round."""


def word_rows() -> list[dict[str, str]]:
    one = "Answer with one word."
    rows = [_row(f"What is the plural of '{w}'? {one}", p, "plural") for w, p in PLURALS]
    seen = set()
    for a, b in OPPOSITES:
        for x, y in ((a, b), (b, a)):
            if x not in seen and x not in ONE_WAY:
                seen.add(x)
                rows.append(_row(f"What is the opposite of '{x}'? {one}", y, "opposite"))
    rows += [_row(f"What is the past tense of '{v}'? {one}", p, "past") for v, p in PAST]
    return rows


def number_rows(seed: int = SEED) -> list[dict[str, str]]:
    rng = random.Random(f"numbers/{seed}")
    rows: dict[str, dict[str, str]] = {}

    def add(prompt: str, value: int, kind: str) -> None:
        rows.setdefault(prompt, _row(prompt, value, kind))

    words = NUMBER_WORDS
    for a in range(1, 21):
        for b in range(1, 21):
            add(f"What is {words[a]} plus {words[b]}?", a + b, "plus")
            if a > b:
                add(f"What is {words[a]} minus {words[b]}?", a - b, "minus")
            if a <= 10 and b <= 10:
                add(f"What is {words[a]} times {words[b]}?", a * b, "times")
    for singular, plural, legs in LEGS:
        add(f"How many legs does a {singular} have?", legs, "legs")
        for n in range(2, 6):
            add(f"How many legs do {n} {plural} have?", n * legs, "legs")
    for small, one, many, factor in UNITS:
        add(f"How many {small} are in one {one}?", factor, "units")
        for n in range(2, 10):
            add(f"How many {small} are in {n} {many}?", n * factor, "units")
    for word in SPELL_WORDS:
        add(f"How many letters are in the word '{word}'?", len(word), "letters")
    out = list(rows.values())
    rng.shuffle(out)
    return out


def write_real_examples(out: Path, seed: int = SEED) -> list[Path]:
    """Write the three sources under ``out`` (deterministic bytes); returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / name for name in FILES]
    rng = random.Random(f"real/{seed}")
    for path, rows in zip(paths, (knowledge_rows(), word_rows(), number_rows(seed)), strict=True):
        rows = list(rows)
        rng.shuffle(rows)
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        path.write_text(text, encoding="utf-8")
    return paths


def add_real_example_command(data_cmds: Any) -> None:
    """Register ``data real-example`` on the ``avocado data`` subcommands."""
    p = data_cmds.add_parser(
        "real-example",
        help="write the real-world prompt sources of recipes/real-small.yaml",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", type=Path, default=Path("examples/real"), help="directory to write")
    p.add_argument("--seed", type=int, default=SEED, help="seed of the row order")
    p.set_defaults(func=run_real_example)


def run_real_example(args: argparse.Namespace) -> int:
    try:
        paths = write_real_examples(args.out, args.seed)
    except OSError as e:
        print(f"error: {e}")
        return 1
    for path in paths:
        print(path)
    return 0
