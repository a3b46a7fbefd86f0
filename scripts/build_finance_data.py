"""Generate the synthetic personal-finance preference dataset shipped with dpo_lab.

Every row is a worked finance question with two answers that share wording and layout:
``chosen`` applies the right method, ``rejected`` makes one realistic mistake (simple instead of
compound growth, a rate not divided by 12, an off-by-one period count, a forgotten fee, ...) and
carries the numbers of that wrong method through to its final sentence. Both answers end with the
same sentence shape, "The answer is X.", so the only difference is the reasoning and the numbers.

Usage::

    python scripts/build_finance_data.py --out dpo_lab/assets/finance --seed 1234

The output is deterministic for a given seed and sizes.
"""

from __future__ import annotations

import argparse
import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "dpo_lab" / "assets" / "finance"

NAMES = [
    "Maria",
    "Tom",
    "Aisha",
    "Kenji",
    "Lena",
    "Diego",
    "Priya",
    "Omar",
    "Sofia",
    "Ben",
    "Chloe",
    "Ivan",
    "Nadia",
    "Lucas",
    "Mei",
    "Sam",
    "Grace",
    "Hugo",
    "Zara",
    "Felix",
]


@dataclass
class Working:
    """One way of solving a problem: the reasoning sentences and the resulting value."""

    steps: str
    value: float


@dataclass
class Problem:
    """A question with its correct working and the wrong workings it can be paired with."""

    topic: str
    prompt: str
    unit: str
    intro: str
    correct: Working
    mistakes: dict[str, Working] = field(default_factory=dict)


# ---------------------------------------------------------------- formatting


def money(x: float, cents: bool = True) -> str:
    """Format a currency amount, e.g. ``$12,345.67`` or ``-$80.00``."""
    sign = "-" if x < 0 else ""
    body = f"{abs(x):,.2f}" if cents else f"{abs(x):,.0f}"
    return f"{sign}${body}"


def dec(rate_pct: float) -> str:
    """A percentage as a decimal fraction without trailing zeros: 5.25 -> ``0.0525``."""
    return f"{rate_pct / 100:.4f}".rstrip("0").rstrip(".")


def pin(rate_pct: float) -> str:
    """An input percentage without trailing zeros: 6.0 -> ``6%``, 5.25 -> ``5.25%``."""
    return f"{rate_pct:.2f}".rstrip("0").rstrip(".") + "%"


def pct(value: float) -> str:
    """A result percentage with two decimals: 7.1834 -> ``7.18%``."""
    return f"{value:.2f}%"


def factor(x: float) -> str:
    """A growth factor with up to six decimals: 1.005 -> ``1.005``."""
    return f"{x:.6f}".rstrip("0").rstrip(".")


def display(value: float, unit: str) -> str:
    """The final value as it appears in the closing sentence."""
    if unit == "currency":
        return money(value)
    if unit == "percent":
        return pct(value)
    if unit == "years":
        return f"{value:.2f} years"
    return f"{int(value):,} units"


def rounded(value: float, unit: str) -> float:
    """The final value rounded exactly as it is displayed."""
    return float(int(value)) if unit == "units" else round(value, 2)


def pick_rate(rng: random.Random, low: float, high: float, step: float = 0.25) -> float:
    """A percentage rate on a grid of ``step`` between ``low`` and ``high``."""
    n = int(round((high - low) / step))
    return round(low + step * rng.randint(0, n), 2)


def pick_amount(rng: random.Random, low: int, high: int, step: int) -> int:
    """A round amount on a grid of ``step`` between ``low`` and ``high``."""
    return rng.randrange(low, high + 1, step)


# ---------------------------------------------------------------- topics


def simple_interest(rng: random.Random) -> Problem:
    """Simple interest earned; mistakes: compounding, months used as years."""
    p = pick_amount(rng, 1000, 50000, 500)
    r = pick_rate(rng, 2, 9.5)
    use_months = rng.random() < 0.5
    if use_months:
        months = rng.choice([m for m in range(6, 61, 3) if m % 12])
        t, span, t_text = months / 12, f"{months} months", f"{months}/12 = {months / 12:g} years"
    else:
        years = rng.randint(2, 10)
        t, span, t_text = float(years), f"{years} years", f"{years} years"
    name = rng.choice(NAMES)
    prompt = rng.choice(
        [
            f"{name} puts {money(p, False)} in an account paying {pin(r)} simple interest per year. "
            f"How much interest does it earn in {span}?",
            f"What is the simple interest on a loan of {money(p, False)} at {pin(r)} a year for {span}?",
            f"A bond of {money(p, False)} pays {pin(r)} simple annual interest. How much interest is earned "
            f"over {span}?",
            f"How much simple interest accrues on {money(p, False)} borrowed at an annual rate of {pin(r)} "
            f"for {span}?",
        ]
    )

    def work(formula: str, tt: str, t_val: float, compound: bool) -> Working:
        value = p * ((1 + r / 100) ** t_val - 1) if compound else p * r / 100 * t_val
        expr = (
            f"{money(p, False)} × ((1 + {dec(r)})^{t_val:g} - 1)"
            if compound
            else f"{money(p, False)} × {dec(r)} × {t_val:g}"
        )
        return Working(f"{formula}, with t in years. Here t = {tt}, so I = {expr} = {money(value)}.", value)

    correct = work("Simple interest is I = P × r × t", t_text, t, False)
    mistakes = {"compound_instead_of_simple": work("Interest is I = P × ((1 + r)^t - 1)", t_text, t, True)}
    if use_months:
        mistakes["months_as_years"] = work(
            "Simple interest is I = P × r × t", f"{months} years", months, False
        )
    intro = rng.choice(
        ["Simple interest grows linearly with time.", "Interest is earned only on the principal."]
    )
    return Problem("simple_interest", prompt, "currency", intro, correct, mistakes)


def compound_interest(rng: random.Random) -> Problem:
    """Final balance with annual or monthly compounding."""
    p = pick_amount(rng, 1000, 60000, 500)
    r = pick_rate(rng, 2, 10)
    t = rng.randint(2, 15)
    monthly = rng.random() < 0.5
    m = 12 if monthly else 1
    how = "compounded monthly" if monthly else "compounded annually"
    name = rng.choice(NAMES)
    prompt = rng.choice(
        [
            f"{name} invests {money(p, False)} at {pin(r)} per year, {how}. What is the balance after {t} "
            "years?",
            f"How much will a deposit of {money(p, False)} grow to in {t} years at {pin(r)} annual interest "
            f"{how}?",
            f"A savings account pays {pin(r)} a year {how}. If {name} deposits {money(p, False)}, how much "
            f"is there after {t} years?",
            f"What is the future value of {money(p, False)} invested for {t} years at {pin(r)}, {how}?",
        ]
    )
    formula = "With compounding m times a year, A = P × (1 + r/m)^(m × t)"

    def compound(mm: int, rate_div: int, years: int) -> Working:
        value = p * (1 + r / 100 / rate_div) ** (mm * years)
        return Working(
            f"{formula}. Here m = {mm}, so A = {money(p, False)} × (1 + {dec(r)}/{rate_div})^({mm} × "
            f"{years}) "
            f"= {money(value)}.",
            value,
        )

    simple_value = p * (1 + r / 100 * t)
    mistakes = {
        "simple_instead_of_compound": Working(
            f"Without compounding, A = P × (1 + r × t). Here m = {m}, so A = {money(p, False)} × "
            f"(1 + {dec(r)} × {t}) = {money(simple_value)}.",
            simple_value,
        )
    }
    if monthly:
        mistakes["annual_instead_of_monthly"] = compound(1, 1, t)
        mistakes["rate_not_divided_by_12"] = compound(12, 1, t)
    else:
        mistakes["off_by_one_period"] = compound(1, 1, t - 1)
    intro = rng.choice(
        [
            "Interest is added to the balance and earns interest itself.",
            "Compound growth multiplies the balance each period.",
        ]
    )
    return Problem("compound_interest", prompt, "currency", intro, compound(m, m, t), mistakes)


def loan_payment(rng: random.Random) -> Problem:
    """Monthly payment of an amortising loan (annuity formula)."""
    if rng.random() < 0.5:
        p = pick_amount(rng, 100000, 600000, 5000)
        years = rng.choice([15, 20, 25, 30])
        kind = "mortgage"
    else:
        p = pick_amount(rng, 5000, 60000, 1000)
        years = rng.randint(3, 7)
        kind = rng.choice(["car loan", "personal loan"])
    r = pick_rate(rng, 3, 9)
    name = rng.choice(NAMES)
    prompt = rng.choice(
        [
            f"{name} takes a {money(p, False)} {kind} at {pin(r)} annual interest for {years} years. "
            f"What is the monthly payment?",
            f"What is the monthly payment on a {years}-year {kind} of {money(p, False)} at {pin(r)} a year?",
            f"A {kind} of {money(p, False)} is repaid monthly over {years} years at an annual rate of "
            f"{pin(r)}. "
            f"How much is each payment?",
        ]
    )
    formula = "The payment is M = P × i / (1 - (1 + i)^(-n)), with i = r/12 and n = 12 × years"

    def annuity(i_text: str, i: float, n: int) -> Working:
        value = p * i / (1 - (1 + i) ** (-n))
        return Working(
            f"{formula}. Here i = {i_text} and n = {n}, so M = {money(p, False)} × {factor(i)} / "
            f"(1 - {factor(1 + i)}^(-{n})) = {money(value)}.",
            value,
        )

    i = r / 100 / 12
    n = 12 * years
    flat = p * (1 + r / 100 * years) / n
    mistakes = {
        "rate_not_divided_by_12": annuity(f"{dec(r)}", r / 100, n),
        "years_as_periods": annuity(f"{dec(r)}/12 = {factor(i)}", i, years),
        "flat_interest": Working(
            f"The payment is M = P × (1 + r × years) / n, with n = 12 × years. Here n = {n}, so "
            f"M = {money(p, False)} × (1 + {dec(r)} × {years}) / {n} = {money(flat)}.",
            flat,
        ),
    }
    intro = rng.choice(
        [
            "Each payment covers interest and part of the principal.",
            "A fixed payment pays the loan off over its term.",
        ]
    )
    return Problem(
        "loan_payment", prompt, "currency", intro, annuity(f"{dec(r)}/12 = {factor(i)}", i, n), mistakes
    )


def percent_change(rng: random.Random) -> Problem:
    """Percentage change between two values; mistakes: wrong base, reversed sign."""
    what, is_money = rng.choice(
        [
            ("share price", True),
            ("monthly rent", True),
            ("quarterly revenue", True),
            ("number of customers", False),
            ("monthly electricity bill", True),
            ("number of subscribers", False),
        ]
    )
    if is_money:
        old = pick_amount(rng, 20, 5000, 5)
    else:
        old = pick_amount(rng, 200, 20000, 10)
    change = rng.choice([-1, 1]) * rng.uniform(0.04, 0.6)
    new = max(1, int(round(old * (1 + change) / 5) * 5))
    fmt = (lambda v: money(v, False)) if is_money else (lambda v: f"{v:,}")
    company = rng.choice(
        ["a bakery", "a small shop", "a software startup", "a gym", "a restaurant", "a bookstore"]
    )
    prompt = rng.choice(
        [
            f"The {what} of {company} went from {fmt(old)} to {fmt(new)}. What is the percentage change?",
            f"Last year the {what} was {fmt(old)}; this year it is {fmt(new)}. By what percentage did it "
            "change?",
            f"What is the percent change when the {what} moves from {fmt(old)} to {fmt(new)}?",
        ]
    )

    def work(formula: str, a: int, b: int, base: int) -> Working:
        value = (a - b) / base * 100
        return Working(f"{formula}. Here ({fmt(a)} - {fmt(b)}) / {fmt(base)} × 100 = {pct(value)}.", value)

    correct = work("Percentage change = (new - old) / old × 100", new, old, old)
    mistakes = {
        "divided_by_new_value": work("Percentage change = (new - old) / new × 100", new, old, new),
        "reversed_sign": work("Percentage change = (old - new) / old × 100", old, new, old),
    }
    intro = rng.choice(
        ["The change is measured relative to the starting value.", "A negative result means a decrease."]
    )
    return Problem("percent_change", prompt, "percent", intro, correct, mistakes)


def cagr(rng: random.Random) -> Problem:
    """Compound annual growth rate; mistakes: arithmetic average, inclusive year count."""
    start = pick_amount(rng, 2000, 200000, 1000)
    growth = rng.uniform(1.15, 3.0)
    end = int(round(start * growth / 500) * 500)
    y0 = rng.randint(2005, 2018)
    n = rng.randint(3, 10)
    y1 = y0 + n
    name = rng.choice(NAMES)
    use_years = rng.random() < 0.6
    span = f"from {y0} to {y1}" if use_years else f"over {n} years"
    prompt = rng.choice(
        [
            f"{name}'s portfolio grew from {money(start, False)} to {money(end, False)} {span}. What was the "
            f"compound annual growth rate?",
            f"A company's revenue rose from {money(start, False)} to {money(end, False)} {span}. What is "
            "the CAGR?",
            f"What is the compound annual growth rate of an investment that went from {money(start, False)} "
            "to "
            f"{money(end, False)} {span}?",
        ]
    )
    n_text = f"{y1} - {y0} = {n}" if use_years else f"{n}"
    formula = "CAGR = (end / start)^(1/n) - 1, where n is the number of years"

    def geometric(nt: str, nn: int) -> Working:
        value = ((end / start) ** (1 / nn) - 1) * 100
        return Working(
            f"{formula}. Here n = {nt}, so CAGR = ({money(end, False)} / {money(start, False)})^(1/{nn})"
            f" - 1 = {pct(value)}.",
            value,
        )

    avg = (end / start - 1) / n * 100
    mistakes = {
        "arithmetic_average": Working(
            f"CAGR = (end / start - 1) / n, where n is the number of years. Here n = {n_text}, so "
            f"CAGR = ({money(end, False)} / {money(start, False)} - 1) / {n} = {pct(avg)}.",
            avg,
        )
    }
    if use_years:
        mistakes["off_by_one_years"] = geometric(f"{y1} - {y0} + 1 = {n + 1}", n + 1)
    intro = rng.choice(
        ["CAGR is the constant yearly rate that links the two values.", "Growth compounds from year to year."]
    )
    return Problem("cagr", prompt, "percent", intro, geometric(n_text, n), mistakes)


def npv(rng: random.Random) -> Problem:
    """Net present value of a project with 3-4 yearly cash flows."""
    cost = pick_amount(rng, 10000, 200000, 1000)
    k = rng.choice([3, 4])
    flows = [int(round(cost * rng.uniform(0.2, 0.5) / 500) * 500) for _ in range(k)]
    r = pick_rate(rng, 4, 12, 0.5)
    g = 1 + r / 100
    flow_text = ", ".join(money(f, False) for f in flows)
    prompt = rng.choice(
        [
            f"A project costs {money(cost, False)} today and returns {flow_text} at the end of the next {k} "
            "years. "
            f"What is its NPV at a {pin(r)} discount rate?",
            f"At a discount rate of {pin(r)}, what is the net present value of investing "
            f"{money(cost, False)} now "
            f"to receive {flow_text} over the following {k} years?",
            f"A machine costs {money(cost, False)} and will save {flow_text} in years 1 to {k}. With a "
            f"{pin(r)} "
            f"discount rate, what is the NPV?",
        ]
    )

    def discounted(formula: str, shift: int, with_cost: bool, discount: bool) -> Working:
        terms, total = [], -cost if with_cost else 0.0
        for t, cf in enumerate(flows, start=1):
            e = t - shift
            total += cf / g**e if discount else cf
            if not discount or e == 0:
                terms.append(money(cf, False))
            else:
                terms.append(f"{money(cf, False)}/{factor(g)}" + (f"^{e}" if e > 1 else ""))
        head = f"-{money(cost, False)} + " if with_cost else ""
        return Working(f"{formula}. Here NPV = {head}{' + '.join(terms)} = {money(total)}.", total)

    correct = discounted("NPV = -C0 + sum of CF_t / (1 + r)^t for t = 1 to N", 0, True, True)
    mistakes = {
        "discounted_from_year_zero": discounted(
            "NPV = -C0 + sum of CF_t / (1 + r)^(t-1) for t = 1 to N", 1, True, True
        ),
        "no_discounting": discounted("NPV = -C0 + sum of CF_t for t = 1 to N", 0, True, False),
        "forgot_initial_cost": discounted("NPV = sum of CF_t / (1 + r)^t for t = 1 to N", 0, False, True),
    }
    intro = rng.choice(
        ["Each cash flow is discounted back to today.", "Money received later is worth less today."]
    )
    return Problem("npv", prompt, "currency", intro, correct, mistakes)


def real_return(rng: random.Random) -> Problem:
    """Inflation-adjusted return (Fisher relation)."""
    nominal = pick_rate(rng, 3, 15)
    inflation = pick_rate(rng, 1, 8)
    name = rng.choice(NAMES)
    prompt = rng.choice(
        [
            f"{name}'s fund returned {pin(nominal)} last year while inflation was {pin(inflation)}. "
            f"What was the real return?",
            f"What is the inflation-adjusted return of an investment that earned {pin(nominal)} nominally "
            "when "
            f"inflation ran at {pin(inflation)}?",
            f"A bond yields {pin(nominal)} and inflation is {pin(inflation)}. What is the real rate of "
            "return?",
        ]
    )
    a, b = dec(nominal), dec(inflation)
    value = ((1 + nominal / 100) / (1 + inflation / 100) - 1) * 100
    sub = nominal - inflation
    mult = ((1 + nominal / 100) * (1 + inflation / 100) - 1) * 100
    correct = Working(
        f"Real return = (1 + nominal) / (1 + inflation) - 1. Here (1 + {a}) / (1 + {b}) - 1 = {pct(value)}.",
        value,
    )
    mistakes = {
        "subtracted_rates": Working(f"Real return = nominal - inflation. Here {a} - {b} = {pct(sub)}.", sub),
        "multiplied_by_inflation": Working(
            f"Real return = (1 + nominal) × (1 + inflation) - 1. Here (1 + {a}) × "
            f"(1 + {b}) - 1 = {pct(mult)}.",
            mult,
        ),
    }
    intro = rng.choice(
        ["Inflation reduces what the money can buy.", "The real return removes the effect of inflation."]
    )
    return Problem("real_return", prompt, "percent", intro, correct, mistakes)


def break_even(rng: random.Random) -> Problem:
    """Break-even volume; mistakes: dividing by price, leaving out a fixed cost."""
    rent = pick_amount(rng, 1000, 15000, 250)
    salaries = pick_amount(rng, 2000, 40000, 500)
    price = pick_amount(rng, 8, 400, 1)
    variable = int(price * rng.uniform(0.2, 0.75))
    business = rng.choice(
        [
            "coffee cart",
            "bike repair shop",
            "t-shirt printer",
            "candle maker",
            "food truck",
            "phone case seller",
        ]
    )
    prompt = rng.choice(
        [
            f"A {business} pays {money(rent, False)} in rent and {money(salaries, False)} in salaries each "
            "month. "
            f"It sells each item for {money(price, False)} with a variable cost of {money(variable, False)}. "
            f"How many items must it sell per month to break even?",
            f"Monthly fixed costs of a {business} are rent of {money(rent, False)} plus salaries of "
            f"{money(salaries, False)}. Price per unit is {money(price, False)} and variable cost per unit "
            "is "
            f"{money(variable, False)}. What is the break-even quantity?",
        ]
    )

    def work(formula: str, fixed_text: str, fixed: int, denom_text: str, denom: int) -> Working:
        units = math.ceil(fixed / denom)
        return Working(
            f"{formula}, rounded up. Here fixed costs = {fixed_text}, so {money(fixed, False)} / "
            f"{denom_text} = {units:,} units.",
            units,
        )

    total = rent + salaries
    both = f"{money(rent, False)} + {money(salaries, False)} = {money(total, False)}"
    margin_text = f"({money(price, False)} - {money(variable, False)})"
    correct = work(
        "Break-even units = fixed costs / (price - variable cost)", both, total, margin_text, price - variable
    )
    mistakes = {
        "divided_by_price": work(
            "Break-even units = fixed costs / price", both, total, money(price, False), price
        ),
        "left_out_fixed_cost": work(
            "Break-even units = fixed costs / (price - variable cost)",
            money(salaries, False),
            salaries,
            margin_text,
            price - variable,
        ),
    }
    intro = rng.choice(
        [
            "Each sale contributes its margin toward the fixed costs.",
            "Break-even is where total margin covers fixed costs.",
        ]
    )
    return Problem("break_even", prompt, "units", intro, correct, mistakes)


def fees_effect(rng: random.Random) -> Problem:
    """Balance after years of returns net of an annual management fee."""
    p = pick_amount(rng, 5000, 100000, 1000)
    r = pick_rate(rng, 4, 10, 0.5)
    f = pick_rate(rng, 0.25, 2.0)
    t = rng.randint(5, 30)
    name = rng.choice(NAMES)
    prompt = rng.choice(
        [
            f"{name} invests {money(p, False)} in a fund that earns {pin(r)} a year before an annual fee of "
            f"{pin(f)}. "
            f"What is the balance after {t} years?",
            f"A fund returns {pin(r)} per year and charges {pin(f)} in fees each year. What does "
            f"{money(p, False)} "
            f"grow to after {t} years?",
            f"How much will {money(p, False)} be worth in {t} years with a {pin(r)} annual return and a "
            f"{pin(f)} "
            f"yearly management fee?",
        ]
    )
    net = 1 + (r - f) / 100
    gross = 1 + r / 100
    v_net, v_gross = p * net**t, p * gross**t
    v_once = v_gross * (1 - f / 100)
    correct = Working(
        f"The yearly growth factor is 1 + r - fee = 1 + {dec(r)} - {dec(f)} = {factor(net)}, so "
        f"A = {money(p, False)} × {factor(net)}^{t} = {money(v_net)}.",
        v_net,
    )
    mistakes = {
        "ignored_fees": Working(
            f"The yearly growth factor is 1 + r = 1 + {dec(r)} = {factor(gross)}, so "
            f"A = {money(p, False)} × {factor(gross)}^{t} = {money(v_gross)}.",
            v_gross,
        ),
        "fee_charged_once": Working(
            f"The yearly growth factor is 1 + r = 1 + {dec(r)} = {factor(gross)}, so "
            f"A = {money(p, False)} × {factor(gross)}^{t} × (1 - {dec(f)}) = "
            f"{money(v_once)}.",
            v_once,
        ),
    }
    intro = rng.choice(
        ["The fee is taken every year, so it compounds too.", "Fees reduce the growth rate each year."]
    )
    return Problem("fees_effect", prompt, "currency", intro, correct, mistakes)


def savings_fv(rng: random.Random) -> Problem:
    """Future value of regular monthly savings (ordinary annuity)."""
    pmt = pick_amount(rng, 50, 1500, 25)
    r = pick_rate(rng, 2, 9)
    years = rng.randint(3, 30)
    name = rng.choice(NAMES)
    prompt = rng.choice(
        [
            f"{name} saves {money(pmt, False)} at the end of every month in an account earning {pin(r)} a "
            "year, "
            f"compounded monthly. How much is saved after {years} years?",
            f"What is the future value of depositing {money(pmt, False)} monthly for {years} years at "
            f"{pin(r)} "
            f"annual interest compounded monthly?",
            f"If you put {money(pmt, False)} into a savings plan each month for {years} years at {pin(r)} "
            "per year "
            f"(monthly compounding), what will it be worth?",
        ]
    )
    formula = "For monthly deposits, FV = PMT × ((1 + i)^n - 1) / i, with i = r/12 and n = 12 × years"

    def annuity(i_text: str, i: float, n: int) -> Working:
        value = pmt * ((1 + i) ** n - 1) / i
        return Working(
            f"{formula}. Here i = {i_text} and n = {n}, so FV = {money(pmt, False)} × "
            f"({factor(1 + i)}^{n} - 1) / {factor(i)} = {money(value)}.",
            value,
        )

    i, n = r / 100 / 12, 12 * years
    i_text = f"{dec(r)}/12 = {factor(i)}"
    mistakes = {
        "no_interest": Working(
            f"Without interest, FV = PMT × n, with n = 12 × years. Here n = {n}, so "
            f"FV = {money(pmt, False)} × {n} = {money(pmt * n)}.",
            float(pmt * n),
        ),
        "years_as_periods": annuity(i_text, i, years),
        "rate_not_divided_by_12": annuity(dec(r), r / 100, n),
    }
    intro = rng.choice(
        ["Each deposit earns interest from the month it is made.", "Regular deposits form an annuity."]
    )
    return Problem("savings_fv", prompt, "currency", intro, annuity(i_text, i, n), mistakes)


def roi(rng: random.Random) -> Problem:
    """Return on investment including extra costs."""
    buy = pick_amount(rng, 2000, 400000, 500)
    costs = int(round(buy * rng.uniform(0.02, 0.25) / 50) * 50)
    sell = int(round(buy * rng.uniform(0.95, 1.8) / 100) * 100)
    asset = rng.choice(
        [
            ("a used car", "repairs"),
            ("an apartment", "renovation"),
            ("a painting", "restoration"),
            ("some equipment", "upgrades"),
            ("a vintage watch", "servicing"),
        ]
    )
    name = rng.choice(NAMES)
    prompt = rng.choice(
        [
            f"{name} bought {asset[0]} for {money(buy, False)}, spent {money(costs, False)} on {asset[1]}, "
            "and sold "
            f"it for {money(sell, False)}. What was the ROI?",
            f"What is the return on investment if {asset[0]} is bought for {money(buy, False)}, "
            f"{money(costs, False)} "
            f"goes into {asset[1]}, and it sells for {money(sell, False)}?",
        ]
    )

    def work(formula: str, net: float, net_text: str, base: float, base_text: str) -> Working:
        value = net / base * 100
        return Working(
            f"{formula}. Here net profit = {net_text} = {money(net, False)}, so ROI = "
            f"{money(net, False)} / {base_text} = {pct(value)}.",
            value,
        )

    total = buy + costs
    net_all = sell - total
    net_text = f"{money(sell, False)} - {money(buy, False)} - {money(costs, False)}"
    total_text = f"({money(buy, False)} + {money(costs, False)})"
    correct = work("ROI = net profit / total cost × 100", net_all, net_text, total, total_text)
    mistakes = {
        "ignored_costs": work(
            "ROI = net profit / purchase price × 100",
            sell - buy,
            f"{money(sell, False)} - {money(buy, False)}",
            buy,
            money(buy, False),
        ),
        "divided_by_sale_price": work(
            "ROI = net profit / sale price × 100", net_all, net_text, sell, money(sell, False)
        ),
    }
    intro = rng.choice(
        ["ROI compares the profit with what was put in.", "All money spent counts as invested."]
    )
    return Problem("roi", prompt, "percent", intro, correct, mistakes)


def capital_gains_tax(rng: random.Random) -> Problem:
    """After-tax profit from selling shares."""
    shares = pick_amount(rng, 10, 1000, 10)
    buy = pick_amount(rng, 5, 300, 1)
    sell = int(round(buy * rng.uniform(1.1, 2.5)))
    tax = rng.choice([10, 12, 15, 18, 20, 22, 25, 28, 30])
    name = rng.choice(NAMES)
    prompt = rng.choice(
        [
            f"{name} bought {shares} shares at {money(buy, False)} and sold them at {money(sell, False)}. "
            "With a "
            f"{tax}% capital gains tax, what is the profit after tax?",
            f"What is the after-tax profit on {shares} shares bought for {money(buy, False)} each and sold "
            "for "
            f"{money(sell, False)} each, if gains are taxed at {tax}%?",
        ]
    )
    gain = (sell - buy) * shares
    proceeds = sell * shares
    t = tax / 100
    gain_text = f"({money(sell, False)} - {money(buy, False)}) × {shares} = {money(gain, False)}"
    correct = Working(
        f"The gain is {gain_text}, and profit after tax = gain × (1 - tax rate) = "
        f"{money(gain, False)} × (1 - {dec(tax)}) = {money(gain * (1 - t))}.",
        gain * (1 - t),
    )
    on_proceeds = gain - proceeds * t
    mistakes = {
        "taxed_sale_proceeds": Working(
            f"The gain is {gain_text}, and profit after tax = gain - proceeds × tax rate = "
            f"{money(gain, False)} - "
            f"{money(proceeds, False)} × {dec(tax)} = {money(on_proceeds)}.",
            on_proceeds,
        ),
        "tax_taken_as_profit": Working(
            f"The gain is {gain_text}, and profit after tax = gain × tax rate = {money(gain, False)} × "
            f"{dec(tax)} "
            f"= {money(gain * t)}.",
            gain * t,
        ),
    }
    intro = rng.choice(
        ["Tax applies only to the gain.", "The gain is the sale value minus the purchase cost."]
    )
    return Problem("capital_gains_tax", prompt, "currency", intro, correct, mistakes)


def present_value(rng: random.Random) -> Problem:
    """Amount to invest today to reach a goal with annual compounding."""
    goal = pick_amount(rng, 5000, 500000, 1000)
    r = pick_rate(rng, 2, 10)
    t = rng.randint(3, 25)
    name = rng.choice(NAMES)
    goal_for = rng.choice(["a house deposit", "college fees", "a new business", "retirement", "a world trip"])
    prompt = rng.choice(
        [
            f"{name} needs {money(goal, False)} for {goal_for} in {t} years. How much must be invested "
            "today at "
            f"{pin(r)} compounded annually?",
            f"What is the present value of {money(goal, False)} received in {t} years at an annual discount "
            "rate of "
            f"{pin(r)}?",
            f"How much should be deposited now, at {pin(r)} a year compounded annually, to have "
            f"{money(goal, False)} "
            f"in {t} years?",
        ]
    )
    g = factor(1 + r / 100)
    pv = goal / (1 + r / 100) ** t
    simple = goal / (1 + r / 100 * t)
    down = goal * (1 - r / 100) ** t
    correct = Working(f"PV = FV / (1 + r)^t. Here PV = {money(goal, False)} / {g}^{t} = {money(pv)}.", pv)
    mistakes = {
        "simple_discounting": Working(
            f"PV = FV / (1 + r × t). Here PV = {money(goal, False)} / (1 + {dec(r)} × {t})"
            f" = {money(simple)}.",
            simple,
        ),
        "multiplied_by_one_minus_rate": Working(
            f"PV = FV × (1 - r)^t. Here PV = {money(goal, False)} × "
            f"{factor(1 - r / 100)}^{t} = {money(down)}.",
            down,
        ),
    }
    intro = rng.choice(["Discounting reverses compound growth.", "A future amount is worth less today."])
    return Problem("present_value", prompt, "currency", intro, correct, mistakes)


def time_to_goal(rng: random.Random) -> Problem:
    """Years needed for a sum to reach a target with annual compounding."""
    p = pick_amount(rng, 1000, 100000, 500)
    mult = rng.choice([1.5, 2, 2, 2.5, 3, 4])
    goal = int(p * mult)
    r = pick_rate(rng, 2, 12)
    name = rng.choice(NAMES)
    prompt = rng.choice(
        [
            f"How many years will it take {money(p, False)} to grow to {money(goal, False)} at {pin(r)} "
            "compounded "
            f"annually?",
            f"{name} has {money(p, False)} invested at {pin(r)} a year, compounded annually. How long until "
            "it "
            f"reaches {money(goal, False)}?",
            f"At {pin(r)} annual compound interest, how long does it take for {money(p, False)} to become "
            f"{money(goal, False)}?",
        ]
    )
    ratio = goal / p
    exact = math.log(ratio) / math.log(1 + r / 100)
    simple = (ratio - 1) / (r / 100)
    continuous = math.log(ratio) / (r / 100)
    ratio_text = f"{money(goal, False)} / {money(p, False)}"
    correct = Working(
        f"t = ln(FV / PV) / ln(1 + r). Here t = ln({ratio_text}) / ln({factor(1 + r / 100)}) = "
        f"{exact:.2f} years.",
        exact,
    )
    mistakes = {
        "simple_instead_of_compound": Working(
            f"t = (FV / PV - 1) / r. Here t = ({ratio_text} - 1) / {dec(r)} = {simple:.2f} years.", simple
        ),
        "rate_instead_of_log_growth": Working(
            f"t = ln(FV / PV) / r. Here t = ln({ratio_text}) / {dec(r)} = {continuous:.2f} years.", continuous
        ),
    }
    intro = rng.choice(["Solve FV = PV × (1 + r)^t for t.", "Take logarithms to find the number of years."])
    return Problem("time_to_goal", prompt, "years", intro, correct, mistakes)


TOPICS: list[Callable[[random.Random], Problem]] = [
    simple_interest,
    compound_interest,
    loan_payment,
    percent_change,
    cagr,
    npv,
    real_return,
    break_even,
    fees_effect,
    savings_fv,
    roi,
    capital_gains_tax,
    present_value,
    time_to_goal,
]


# ---------------------------------------------------------------- assembly


def render(problem: Problem, working: Working) -> str:
    """An answer text: intro, reasoning, and the fixed closing sentence."""
    return f"{problem.intro} {working.steps} The answer is {display(working.value, problem.unit)}."


def make_row(problem: Problem, rng: random.Random) -> dict | None:
    """Pair the correct working with one mistake whose displayed value differs, or None."""
    correct_value = rounded(problem.correct.value, problem.unit)
    options = [
        (label, w)
        for label, w in problem.mistakes.items()
        if rounded(w.value, problem.unit) != correct_value and math.isfinite(w.value)
    ]
    if not options:
        return None
    label, wrong = rng.choice(options)
    chosen, rejected = render(problem, problem.correct), render(problem, wrong)
    if chosen == rejected:
        return None
    return {
        "topic": problem.topic,
        "prompt": problem.prompt,
        "chosen": chosen,
        "rejected": rejected,
        "answer": correct_value,
        "rejected_answer": rounded(wrong.value, problem.unit),
        "mistake": label,
        "unit": problem.unit,
    }


def generate_rows(n: int, rng: random.Random, seen: set[str]) -> list[dict]:
    """Generate ``n`` rows with prompts not in ``seen``, cycling through the topics."""
    rows: list[dict] = []
    attempts = 0
    while len(rows) < n:
        attempts += 1
        if attempts > 50 * n:
            raise RuntimeError("could not generate enough unique questions")
        topic = TOPICS[len(rows) % len(TOPICS)]
        row = make_row(topic(rng), rng)
        if row is None or row["prompt"] in seen:
            continue
        seen.add(row["prompt"])
        rows.append(row)
    rng.shuffle(rows)
    return rows


def check(train: list[dict], test: list[dict]) -> None:
    """Assert the dataset invariants."""
    train_prompts = {r["prompt"] for r in train}
    assert not train_prompts & {r["prompt"] for r in test}, "test questions leak into train"
    for row in train + test:
        assert row["chosen"] != row["rejected"]
        assert row["answer"] != row["rejected_answer"]
        assert row["chosen"].endswith(f"The answer is {display(row['answer'], row['unit'])}.")
        assert row["rejected"].endswith(f"The answer is {display(row['rejected_answer'], row['unit'])}.")


def write_jsonl(rows: list[dict], path: Path, split: str) -> None:
    """Write rows with stable ids, one JSON object per line."""
    with path.open("w", encoding="utf-8") as fh:
        for i, row in enumerate(rows):
            fh.write(json.dumps({"id": f"{split}-{i:05d}", **row}, ensure_ascii=False) + "\n")


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--n-train", type=int, default=1200)
    parser.add_argument("--n-test", type=int, default=200)
    return parser.parse_args()


def main() -> None:
    """Build and write the train and test splits."""
    args = parse_args()
    rng = random.Random(args.seed)
    seen: set[str] = set()
    train = generate_rows(args.n_train, rng, seen)
    test = generate_rows(args.n_test, rng, seen)
    check(train, test)
    args.out.mkdir(parents=True, exist_ok=True)
    write_jsonl(train, args.out / "train.jsonl", "train")
    write_jsonl(test, args.out / "test.jsonl", "test")
    words = [len(r["chosen"].split()) for r in train]
    print(f"wrote {len(train)} train and {len(test)} test rows to {args.out}")
    print(f"chosen words: min {min(words)}, mean {sum(words) / len(words):.1f}, max {max(words)}")


if __name__ == "__main__":
    main()
