"""Write data/emotion/train.tsv from hand-written lines plus seeded template expansions.

test.tsv is hand-written and frozen; this script never writes it. It reads it to drop any
training line that is an exact or near duplicate (cosine > 0.95 with all-MiniLM-L6-v2) of a
test line, and reports how many it dropped. Run from the repository root:

    .venv/bin/python data/emotion/make_dataset.py

Output is deterministic (fixed seed; no dependence on dict or set order).
"""

from __future__ import annotations

import json
import random
import re
import sys
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

SEED = 20240611
PER_CLASS_TEMPLATED = 130
NEAR_DUP_COS = 0.95
LABELS = ("neutral", "positive", "frustrated", "anxious", "confused", "sad")

# fmt: off
SLOTS: dict[str, list[str]] = {
    "issue": [
        "my bill", "my internet", "the wifi", "my claim", "my insurance claim", "my debit card",
        "my credit card", "my flight", "the booking", "my hotel reservation", "my appointment",
        "my doctor's appointment", "my subscription", "the streaming subscription", "my package",
        "the delivery", "the refund", "my order", "my prescription", "the wire transfer",
        "my car rental", "the router", "my phone line", "my statement", "the gym membership",
        "the electric bill", "the water bill", "my loan payment", "my mortgage payment",
        "the repair", "the replacement card", "my return", "the cable box", "my pension deposit",
    ],
    "dur": [
        "an hour", "two hours", "forty minutes", "twenty minutes", "three days", "a week",
        "two weeks", "a month", "since monday", "all morning", "half the day",
    ],
    "amount": [
        "twenty dollars", "fifty bucks", "a hundred and twenty dollars", "three hundred dollars",
        "eighty nine ninety nine", "fifteen dollars", "two hundred dollars", "six hundred dollars",
    ],
    "day": [
        "monday", "tuesday", "friday", "the weekend", "tomorrow", "tonight", "the fifteenth",
        "the end of the month", "thursday morning", "noon",
    ],
    "pday": ["monday", "last week", "yesterday", "the first", "last friday", "two weeks ago"],
    "ord": ["second", "third", "fourth", "fifth", "sixth", "like tenth"],
    "ntimes": ["two", "three", "four", "five", "like ten", "so many"],
    "person": [
        "my husband", "my wife", "my mom", "my dad", "my son", "my daughter", "my grandmother",
        "my brother", "my partner", "my uncle",
    ],
    "neg_emo": ["upset", "angry", "mad", "worried", "stressed", "annoyed", "confused"],
    "want": [
        "have a question", "want to check the details", "want to confirm the date",
        "need the reference number", "want to know the balance", "want to update my info",
    ],
    "emo_adj": ["frustrating", "stressful", "confusing", "upsetting", "disappointing", "annoying"],
    "emo_adj2": ["frustrated", "worried", "upset", "confused", "annoyed", "stressed"],
    "ack": ["okay", "alright", "sure", "yes", "right", "mhm", "yeah"],
    "pos_ex": [
        "perfect", "awesome", "great", "wonderful", "fantastic", "excellent", "oh nice",
        "lovely", "sweet", "amazing", "oh good",
    ],
    "pos_end": [
        "thank you", "that really helps", "i appreciate it", "you've been so helpful",
        "that's a relief", "thanks for your patience", "you made that easy",
        "that's exactly what i wanted", "thanks so much",
    ],
    "resolved": ["approved", "fixed", "refunded", "confirmed", "rescheduled", "credited"],
    "sarc_ex": [
        "oh great", "wonderful", "oh perfect", "fantastic", "just great", "oh lovely",
        "brilliant", "awesome", "yeah great", "oh wonderful",
    ],
    "sarc_bad": [
        "another fee", "another outage", "another delay", "they lost my package again",
        "the app crashed again", "now i'm double charged", "the price went up again",
        "my flight got cancelled again", "i'm on hold again", "another automated message",
        "another transfer", "the tech didn't show again", "a new surcharge",
    ],
    "frus_adj": [
        "fed up", "sick and tired", "really annoyed", "so frustrated", "furious", "done",
        "really irritated", "fed up and angry",
    ],
    "need": [
        "i have a job interview tomorrow", "my rent is due on friday", "i fly out tonight",
        "my mom is in the hospital", "i'm on a fixed income", "i only have a few dollars left",
        "i start a new job monday", "my kids need it for school", "the deadline is today",
    ],
    "term": [
        "prorated", "deductible", "copay", "escrow", "pending authorization", "grace period",
        "out of network", "statement balance", "minimum payment", "coinsurance", "apr",
        "the rebooking fee", "a soft credit check", "autopay enrollment", "the activation code",
        "a chargeback", "the service fee", "a hold on the funds",
    ],
    "state_pair": [
        "active or cancelled", "paid or still pending", "approved or denied",
        "shipped or not", "confirmed or not", "on or off", "open or closed",
    ],
    "status": ["pending", "on hold", "processing", "delivered", "declined", "suspended", "expired"],
    "task": [
        "reset the router", "read this bill", "submit the claim online", "change my seat",
        "link the accounts", "find the tracking number", "update the app",
        "set up the new card", "turn off the auto renewal", "upload the documents",
    ],
    "option": ["plan", "button", "account", "form", "option", "cable", "link", "menu"],
    "act_pair": [
        "call the bank or call you", "pay now or wait for the bill", "return it or keep it",
        "restart it or unplug it", "go online or come in", "sign it or send it back",
    ],
    "resign_start": ["fine", "okay", "whatever", "i guess", "oh well", "yeah", "alright"],
    "resign_end": [
        "it doesn't matter", "i'll just live with it", "i'm used to it", "there's no point",
        "it was never going to work", "i don't really care anymore", "just cancel it",
        "nothing's going to change", "i'll just leave it",
    ],
    "close_task": [
        "close the account", "cancel the subscription", "take their name off the policy",
        "cancel the phone line", "stop the deliveries", "transfer the bills to my name",
    ],
    "neg_emo2": ["angry", "mad", "upset", "yelling at you"],
    "sad_adj": ["tired", "disappointed", "sad", "worn out", "let down", "drained"],
    "event": [
        "the trip", "the concert", "the vacation", "the weekend away", "my daughter's visit",
        "the reunion", "the holidays",
    ],
}

TEMPLATES: dict[str, list[str]] = {
    "neutral": [
        "i'm calling about {issue}",
        "i have a question about {issue}",
        "can you check the status of {issue}",
        "i need some information about {issue}",
        "i'm calling for {person}, it's about {issue}",
        "could you look up {issue} for me",
        "i'm not {neg_emo}, i just {want}",
        "just checking on {issue}, no rush",
        "what's the next step for {issue}",
        "is {issue} still scheduled for {day}",
        "i'd like to pay {amount} today",
        "the payment of {amount} went out {pday}",
        "{ack}, and {issue} is under my name",
        "i understand how {emo_adj} this must be, let me look at {issue}",
        "i'm sorry about the trouble with {issue}, let me pull up the account",
        "i can see why you'd be {emo_adj2} about {issue}",
        "thanks for holding, i'm looking at {issue} now",
        "i apologize for the delay on {issue}",
        "{ack}, go ahead with {issue}",
        "{person} asked me to call about {issue}",
    ],
    "positive": [
        "thank you so much for fixing {issue}",
        "{issue} is sorted now, thank you",
        "i'm so glad {issue} went through",
        "{pos_ex}, {pos_end}",
        "you were really helpful with {issue}",
        "what a relief, i was worried about {issue}",
        "i appreciate you taking care of {issue} so fast",
        "i'm really happy with how {issue} was handled",
        "good news, {issue} has been {resolved}",
        "i'm glad i could help with {issue}",
        "no complaints about {issue}, it's been great",
        "{pos_ex}, {issue} is all good now",
        "oh {issue} is {resolved}? {pos_end}",
    ],
    "frustrated": [
        "this is the {ord} time i'm calling about {issue}",
        "i've been waiting {dur} for {issue} and nothing",
        "i've been on hold for {dur}",
        "why is {issue} still not fixed",
        "{sarc_ex}, {sarc_bad}",
        "you people messed up {issue} again",
        "i'm {frus_adj} with {issue}",
        "nobody can tell me what's going on with {issue}",
        "i was told {issue} would be fixed {pday} and it wasn't",
        "if {issue} isn't fixed today i'm cancelling",
        "i'm not happy with how {issue} was handled",
        "this is ridiculous, {issue} has been broken for {dur}",
        "i've explained the problem with {issue} {ntimes} times",
        "just fix {issue}, i don't want another apology",
        "i want a supervisor, {issue} is still a mess",
    ],
    "anxious": [
        "i really need {issue} sorted by {day}",
        "i'm worried about {issue}",
        "what if {issue} doesn't go through before {day}",
        "i can't afford {amount} right now",
        "i'm scared {issue} is going to be cancelled",
        "please, {issue} has to be ready by {day}, it's urgent",
        "i'm nervous because {need}",
        "is {issue} going to be okay, i'm really stressed",
        "if {issue} isn't fixed by {day} i'm in trouble",
        "i don't know what i'll do if {issue} falls through",
        "how soon can you fix {issue}, {need}",
        "i'm afraid i'll be charged {amount} for {issue}",
    ],
    "confused": [
        "i don't understand what happened with {issue}",
        "wait, so is {issue} {state_pair}",
        "i'm confused about {issue}",
        "what does {term} mean",
        "can you explain {term} again, i don't get it",
        "i thought {issue} was done, now i'm lost",
        "why does {issue} say {status}",
        "i'm not sure how to {task}",
        "which {option} am i supposed to pick",
        "so do i {act_pair}",
        "sorry, what's {term} and does it apply to me",
    ],
    "sad": [
        "i guess {issue} doesn't matter anymore",
        "{resign_start}, {resign_end}",
        "{person} passed away and i need to {close_task}",
        "i'm not {neg_emo2}, just {sad_adj}",
        "i don't have the energy to deal with {issue} anymore",
        "i've given up on {issue}",
        "forget about {issue}, it's not worth it",
        "i lost my job, so i have to cancel {issue}",
        "i was really looking forward to {event}, but it's fine",
        "nothing ever goes right with {issue}, oh well",
        "i'm just {sad_adj}, do what you want with {issue}",
    ],
}

# fmt: on

FILLERS = ["uh", "um", "like", "you know", "i mean"]
OPENERS = ["yeah", "so", "okay so", "well", "um", "yeah so", "look"]


def fill(template: str, rng: random.Random) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: rng.choice(SLOTS[m.group(1)]), template)


def asr_noise(text: str, rng: random.Random) -> str:
    """Make a line look like ASR output: fillers, a repeated word, dropped punctuation."""
    words = text.split()
    if rng.random() < 0.25:
        words.insert(rng.randrange(len(words) + 1), rng.choice(FILLERS))
    if rng.random() < 0.1 and len(words) > 2:
        i = rng.randrange(len(words))
        words.insert(i, words[i].strip(",.?!"))
    if rng.random() < 0.2:
        words.insert(0, rng.choice(OPENERS))
    out = " ".join(words)
    if rng.random() < 0.4:
        out = re.sub(r"[,.?!]", "", out)
    return out


def read_sections(path: Path) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    label = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if line.startswith("## "):
            label = line[3:].strip()
        elif line and not line.startswith("#"):
            assert label in LABELS, label
            rows.append((line, label))
    return rows


def read_tsv(path: Path) -> list[tuple[str, str]]:
    lines = path.read_text().splitlines()[1:]
    return [(t, lab) for t, lab in (ln.split("\t") for ln in lines if ln.strip())]


def key(text: str) -> str:
    return " ".join(re.sub(r"[^a-z' ]", " ", text.lower()).split())


def templated(rng: random.Random) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for label in LABELS:
        seen: set[str] = set()
        tries = 0
        while len(seen) < PER_CLASS_TEMPLATED and tries < 100 * PER_CLASS_TEMPLATED:
            tries += 1
            line = asr_noise(fill(rng.choice(TEMPLATES[label]), rng), rng)
            if key(line) not in seen:
                seen.add(key(line))
                rows.append((line, label))
    return rows


def main() -> None:
    rng = random.Random(SEED)
    test = read_tsv(HERE / "test.tsv")
    hand = read_sections(HERE / "train_handwritten.txt")
    candidates = hand + templated(rng)

    # Exact duplicates (after normalising case and punctuation), inside train and vs test.
    test_keys = {key(t) for t, _ in test}
    seen: set[str] = set()
    rows: list[tuple[str, str]] = []
    exact_vs_test = exact_in_train = 0
    for text, label in candidates:
        k = key(text)
        if k in test_keys:
            exact_vs_test += 1
        elif k in seen:
            exact_in_train += 1
        else:
            seen.add(k)
            rows.append((text, label))

    from models.embeddings import SentenceEmbedder

    emb = SentenceEmbedder()
    sims = emb.embed([t for t, _ in rows]) @ emb.embed([t for t, _ in test]).T
    nearest = sims.max(axis=1)
    dropped = [
        (rows[i][0], test[int(sims[i].argmax())][0])
        for i in range(len(rows))
        if nearest[i] > NEAR_DUP_COS
    ]
    keep = [r for r, s in zip(rows, nearest, strict=True) if s <= NEAR_DUP_COS]

    with (HERE / "train.tsv").open("w") as f:
        f.write("text\tlabel\n")
        for text, label in keep:
            f.write(f"{text}\t{label}\n")
    report = {
        "seed": SEED,
        "handwritten_candidates": len(hand),
        "templated_candidates": len(candidates) - len(hand),
        "removed_exact_duplicate_of_test": exact_vs_test,
        "removed_exact_duplicate_within_train": exact_in_train,
        "removed_near_duplicate_of_test_cos_gt_0.95": len(dropped),
        "near_duplicate_pairs_removed": dropped,
        "train_lines_with_test_neighbour_cos_gt_0.90": int(
            (nearest[nearest <= NEAR_DUP_COS] > 0.90).sum()
        ),
        "train_per_class": dict(sorted(Counter(lab for _, lab in keep).items())),
        "test_per_class": dict(sorted(Counter(lab for _, lab in test).items())),
    }
    (HERE / "dedup_report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(
        json.dumps(
            {k: v for k, v in report.items() if k != "near_duplicate_pairs_removed"}, indent=2
        )
    )


if __name__ == "__main__":
    main()
