"""Reference vectors for veneer-stats, computed by GrowthBook's own stats engine.

Re-run (needs Python 3.9+ and the package registry):

    python3 -m venv /tmp/gbstats && /tmp/gbstats/bin/pip install gbstats==0.8.0
    /tmp/gbstats/bin/python host/stats/tests/gbstats/generate.py > host/stats/tests/gbstats/reference.jsonl

Each output line is {"request": ..., "answer": ...}: the request in `veneer stats`' form, and
what gbstats 0.8.0 answers for it, computed with its test classes (TwoSidedTTest,
SequentialTwoSidedTTest, EffectBayesianABTest), check_srm, and the `expected` rule of its report
pipeline (analyze_metric_df). Cases where gbstats itself raises are left out. The cases are
drawn from a fixed seed, plus hand-written edge cases (zero and negative baselines, no variance,
empty arms, a skewed split).
"""

import json
import math
import random
import sys

import gbstats
from gbstats.bayesian.tests import EffectBayesianABTest, EffectBayesianConfig, GaussianPrior
from gbstats.frequentist.tests import (
    FrequentistConfig,
    SequentialConfig,
    SequentialTwoSidedTTest,
    TwoSidedTTest,
)
from gbstats.models.statistics import ProportionStatistic, SampleMeanStatistic
from gbstats.utils import check_srm

assert gbstats.__version__ == "0.8.0", gbstats.__version__


def stat(metric, arm):
    if metric == "proportion":
        return ProportionStatistic(n=arm["users"], sum=arm["sum"])
    return SampleMeanStatistic(n=arm["users"], sum=arm["sum"], sum_squares=arm["sum_squares"])


def num(x):
    x = float(x)
    return x if math.isfinite(x) else None


def answer(req):
    metric, arms = req["metric"], req["arms"]
    weights = req.get("weights") or [1] * len(arms)
    a = stat(metric, arms[0])
    variations = []
    for arm in arms[1:]:
        b = stat(metric, arm)
        if req["engine"] == "frequentist":
            if req["sequential"]:
                test = SequentialTwoSidedTTest(
                    a, b, SequentialConfig(difference_type=req["difference"], sequential_tuning_parameter=5000)
                )
            else:
                test = TwoSidedTTest(a, b, FrequentistConfig(difference_type=req["difference"]))
        else:
            p = req["prior"]
            prior = (
                GaussianPrior(mean=p["mean"], variance=p["variance"], proper=True)
                if p is not None
                else GaussianPrior()
            )
            test = EffectBayesianABTest(
                a,
                b,
                EffectBayesianConfig(difference_type=req["difference"], prior_effect=prior, prior_type="relative"),
            )
        res = test.compute_result()
        # The report pipeline's rule (gbstats.gbstats.analyze_metric_df).
        if test.stat_a.unadjusted_mean <= 0:
            expected = 0
        elif res.expected == 0:
            expected = (test.stat_b.mean - test.stat_a.mean) / test.stat_a.unadjusted_mean
        else:
            expected = res.expected
        bayes = req["engine"] == "bayesian"
        variations.append(
            {
                "expected": num(expected),
                "ci": [num(res.ci[0]), num(res.ci[1])],
                "p_value": None if bayes else num(res.p_value),
                "chance_to_win": num(res.chance_to_win) if bayes else None,
                "risk": [num(res.risk[0]), num(res.risk[1])] if bayes else None,
                "error_message": res.error_message,
            }
        )
    return {"srm_p": num(check_srm([x["users"] for x in arms], weights)), "variations": variations}


def proportion_arm(rng, users, rate):
    return {"users": users, "sum": sum(1 for _ in range(users) if rng.random() < rate) if users < 5000 else round(users * rate * rng.uniform(0.9, 1.1))}


def mean_arm(rng, users, mu, sd):
    values = [rng.gauss(mu, sd) for _ in range(users)]
    return {"users": users, "sum": sum(values), "sum_squares": sum(v * v for v in values)}


def random_request(rng):
    metric = rng.choice(["proportion", "mean"])
    k = rng.choice([2, 2, 2, 3, 4])
    users = [rng.randint(20, 3000) for _ in range(k)]
    if metric == "proportion":
        base = rng.uniform(0.01, 0.6)
        arms = [proportion_arm(rng, n, min(0.99, base * rng.uniform(0.8, 1.25))) for n in users]
    else:
        mu, sd = rng.uniform(-2, 60), rng.uniform(0.5, 40)
        arms = [mean_arm(rng, n, mu * rng.uniform(0.85, 1.2), sd) for n in users]
    engine = rng.choice(["frequentist", "bayesian"])
    req = {
        "metric": metric,
        "arms": arms,
        "weights": None if rng.random() < 0.5 else [rng.choice([1, 2, 3]) for _ in range(k)],
        "engine": engine,
        "difference": rng.choice(["relative", "absolute"]),
        "sequential": engine == "frequentist" and rng.random() < 0.4,
        "prior": None,
    }
    if engine == "bayesian":
        req["prior"] = rng.choice([None, {"mean": 0, "variance": 0.01}, {"mean": rng.uniform(-0.1, 0.1), "variance": rng.uniform(0.001, 0.5)}])
    return req


def edge_cases():
    def req(metric, arms, engine, difference="relative", sequential=False, prior=None, weights=None):
        return {"metric": metric, "arms": arms, "weights": weights, "engine": engine, "difference": difference, "sequential": sequential, "prior": prior}

    zero = [{"users": 1000, "sum": 0}, {"users": 1000, "sum": 12}]
    everyone = [{"users": 500, "sum": 500}, {"users": 500, "sum": 480}]
    empty = [{"users": 800, "sum": 40}, {"users": 0, "sum": 0}]
    negative = [{"users": 400, "sum": -300.0, "sum_squares": 2600.0}, {"users": 410, "sum": -100.0, "sum_squares": 2500.0}]
    skewed = [{"users": 5500, "sum": 550}, {"users": 4500, "sum": 500}]
    big = [{"users": 2_000_000, "sum": 61_000}, {"users": 2_001_000, "sum": 63_500}]
    out = []
    for engine in ["frequentist", "bayesian"]:
        for difference in ["relative", "absolute"]:
            for arms, metric in [(zero, "proportion"), (everyone, "proportion"), (empty, "proportion"), (negative, "mean"), (skewed, "proportion"), (big, "proportion")]:
                out.append(req(metric, arms, engine, difference))
                if engine == "frequentist":
                    out.append(req(metric, arms, engine, difference, sequential=True))
                else:
                    out.append(req(metric, arms, engine, difference, prior={"mean": 0, "variance": 0.01}))
    # The seeded experiment of the host's report test (tests/tests/reports.rs): 1,000 users per
    # variation, 100 and 120 buyers of 20.0 each, as its report analyses them.
    seeded_rate = [{"users": 1000, "sum": 100}, {"users": 1000, "sum": 120}]
    seeded_value = [{"users": 1000, "sum": 2000.0, "sum_squares": 40000.0}, {"users": 1000, "sum": 2400.0, "sum_squares": 48000.0}]
    for engine in ["bayesian", "frequentist"]:
        out.append(req("proportion", seeded_rate, engine, weights=[0.5, 0.5]))
        out.append(req("mean", seeded_value, engine, weights=[0.5, 0.5]))
    out.append(req("proportion", skewed, "frequentist", weights=[0.55, 0.45]))
    out.append(req("proportion", skewed, "frequentist", weights=[0, 1]))
    return out


def main():
    rng = random.Random(20261125)
    requests = edge_cases() + [random_request(rng) for _ in range(400)]
    for r in requests:
        try:
            a = answer(r)
        except (ZeroDivisionError, ValueError):
            continue
        sys.stdout.write(json.dumps({"request": r, "answer": a}) + "\n")


if __name__ == "__main__":
    main()
