"""Synthetic APCD extracts shaped like the real feed (``pgx sample``).

``generate`` writes ``OUTDIR/pharmacy/*.txt`` and ``OUTDIR/medical/*.txt``: CP1252, pipe-delimited,
unquoted, the exact header first, quarterly files named like the feed. Columns are built as Arrow
arrays (``take`` from small value pools, ``pc.random`` for draws) and written by Arrow's CSV writer
in chunks, so memory stays bounded and no Python loop runs per row except over the one chunk per
file that receives injected defects. With ``defects=True`` every reason code a raw-file defect
gets (ingest rejects, impute quarantine) is planted at known physical lines, recorded in
``OUTDIR/_manifest.json`` (names, line numbers and reason codes only: no PHI).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import random
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from pgx_apcd import layout

ENCODING = "cp1252"
CHUNK_ROWS = 50_000
FILE_PREFIX = {"pharmacy": "Genomic_Screening_All_RX_Claims", "medical": "Genomic_Screening_All_Medical_Claims"}
# Incurred dates run a little past the 2016-2020 analysis years, as the real extracts do.
FIRST_DAY, LAST_DAY = dt.date(2015, 11, 1), dt.date(2021, 2, 28)
MISSING_RATE = 0.04
# Bytes CP1252 leaves undefined (Python's codec refuses them).
CP1252_UNDEFINED = (0x81, 0x8D, 0x8F, 0x90, 0x9D)


@dataclass
class FileManifest:
    """What one generated file holds; line numbers are 1-based physical lines (header = 1)."""

    path: str  # relative to OUTDIR
    data_type: str
    records: int  # generated claim records, including those with impute-level defects
    data_lines: int  # physical data lines as ingest counts them (no header, no blank final line)
    header_ok: bool
    status: str | None  # expected file-level status: SCHEMA_MISMATCH / EMPTY_FILE / EMPTY_EXTRACT
    line_ending: str = "LF"
    bom: bool = False
    final_newline: bool = True
    blank_final_line: bool = False
    row_defects: list[tuple[int, str]] = field(default_factory=list)  # ingest rejects
    impute_defects: list[tuple[int, str]] = field(default_factory=list)  # valid ingest rows
    quirks: list[tuple[int, str]] = field(default_factory=list)  # STRAY_QUOTE, DUPLICATE_LINE: valid rows


@dataclass
class SampleManifest:
    """Everything ``generate`` wrote; JSON-serializable and free of data values."""

    rows: int
    seed: int
    defects: bool
    files: list[FileManifest] = field(default_factory=list)

    def to_json(self) -> str:
        """Serialize (tuples become two-element lists)."""
        return json.dumps(asdict(self), indent=1)

    def write(self, path: str | Path) -> None:
        """Write :meth:`to_json` to ``path``."""
        Path(path).write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def read(cls, path: str | Path) -> SampleManifest:
        """Load a manifest written by :meth:`write`."""
        raw: dict[str, Any] = json.loads(Path(path).read_text(encoding="utf-8"))
        files = []
        for f in raw.pop("files"):
            for key in ("row_defects", "impute_defects", "quirks"):
                f[key] = [(int(line), str(code)) for line, code in f[key]]
            files.append(FileManifest(**f))
        return cls(files=files, **raw)


# ---------------------------------------------------------------------------------------------
# Randomness: every draw is seeded from (seed, scope, name) so a chunk never depends on another.


def _seed(*parts: object) -> int:
    return int.from_bytes(hashlib.blake2b(repr(parts).encode(), digest_size=8).digest(), "little") >> 2


class _Draw:
    def __init__(self, *scope: object) -> None:
        self.scope = scope

    def u(self, n: int, name: str) -> pa.Array:
        return pc.random(n, initializer=_seed(*self.scope, name))

    def idx(self, n: int, k: int, name: str) -> pa.Array:
        return pc.cast(pc.floor(pc.multiply(self.u(n, name), float(k))), pa.int64())

    def mask(self, n: int, p: float, name: str) -> pa.Array:
        return pc.less(self.u(n, name), p)

    def pick(self, vocab: pa.Array, n: int, name: str) -> pa.Array:
        return vocab.take(self.idx(n, len(vocab), name))


def _b(values: list[str]) -> pa.Array:
    return pa.array([v.encode(ENCODING) for v in values], pa.binary())


def _num(arr: pa.Array, width: int = 0) -> pa.Array:
    s = pc.cast(arr, pa.string())
    return (pc.utf8_lpad(s, width, padding="0") if width else s).view(pa.binary())


def _cat(*parts: pa.Array | bytes) -> pa.Array:
    return pc.binary_join_element_wise(*parts, b"")


def _blank(n: int, value: bytes = b"") -> pa.Array:
    return pa.repeat(pa.scalar(value, pa.binary()), n)


def _pool(rows: Sequence[tuple[str, ...]]) -> list[pa.Array]:
    return [_b(list(col)) for col in zip(*rows, strict=True)]


# ---------------------------------------------------------------------------------------------
# Value pools (the feed's vocabulary). Repeated entries weight the draw.

_COUNTIES = [  # FIPS, name, state, ZIP3 — New England ZIPs start with 0, like many member keys
    ("25025", "SUFFOLK", "MA", "021"), ("25017", "MIDDLESEX", "MA", "018"), ("25021", "NORFOLK", "MA", "020"),
    ("25027", "WORCESTER", "MA", "016"), ("25009", "ESSEX", "MA", "019"), ("25013", "HAMPDEN", "MA", "011"),
    ("25023", "PLYMOUTH", "MA", "023"), ("25005", "BRISTOL", "MA", "027"), ("25001", "BARNSTABLE", "MA", "026"),
    ("25003", "BERKSHIRE", "MA", "012"), ("33011", "HILLSBOROUGH", "NH", "030"), ("44007", "PROVIDENCE", "RI", "029"),
    ("09003", "HARTFORD", "CT", "061"), ("36061", "NEW YORK", "NY", "100"),
]
_PAYERS = [("1 - Commercial", "COMMERCIAL")] * 5 + [("2 - Medicaid", "MEDICAID")] * 3 + [
    ("3 - Medicare Advantage", "MEDICARE"), ("4 - Self-Insured", "COMMERCIAL"),
]
_RACES = ["01", "01", "01", "01", "02", "02", "03", "04", "05", "06", "07", "08", "09"]
_MSAS = ["14460 - Boston-Cambridge-Newton, MA-NH", "49340 - Worcester, MA-CT", "44140 - Springfield, MA",
         "39300 - Providence-Warwick, RI-MA", "25540 - Hartford-East Hartford-Middletown, CT"]
_SPECIALTIES = [("Internal Medicine", "207R00000X"), ("Family Medicine", "207Q00000X"),
                ("Pharmacy", "3336C0003X"), ("Cardiovascular Disease", "207RC0000X"),
                ("Clinical Genetics", "207SG0201X"), ("Emergency Medicine", "207P00000X"),
                ("General Acute Care Hospital", "282N00000X"), ("Clinical Medical Laboratory", "291U00000X")]
_NAMES = ["BOSTON MEDICAL ASSOCIATES", "CAMBRIDGE HEALTH ALLIANCE", "WORCESTER FAMILY PRACTICE",
          "CLÍNICA SAN JOSÉ", "NEW ENGLAND GENOMICS LAB", "CVS PHARMACY #0412", "WALGREENS #11523",
          "O\u2019BRIEN CARDIOLOGY PC", "SOUTH SHORE HOSPITAL", "PIONEER VALLEY PHYSICIANS", "NORTH SHORE LABS",
          "CAPE COD PHARMACY", "RENÉE DUBOIS MD", "MERCY MEDICAL CENTER", "QUEST DIAGNOSTICS"]
_DX = [  # code, description, rollup, CCS 1-3
    ("I5032", "Chronic diastolic (congestive) heart failure", "I50", "Circulatory", "Heart failure", "CIR019"),
    ("E119", "Type 2 diabetes mellitus without complications", "E11", "Endocrine", "Diabetes", "END002"),
    ("I10", "Essential (primary) hypertension", "I10", "Circulatory", "Hypertension", "CIR007"),
    ("F1120", "Opioid dependence, uncomplicated", "F11", "Mental", "Opioid-related", "MBD019"),
    ("J449", "Chronic obstructive pulmonary disease, unspecified", "J44", "Respiratory", "COPD", "RSP008"),
    ("Z0000", "Encounter for general adult medical exam", "Z00", "Factors", "Exam", "FAC014"),
    ("M545", "Low back pain", "M54", "Musculoskeletal", "Back problems", "MUS038"),
    ("E785", "Hyperlipidemia, unspecified", "E78", "Endocrine", "Lipid disorders", "END010"),
    ("N183", "Chronic kidney disease, stage 3", "N18", "Genitourinary", "CKD", "GEN003"),
    ("F329", "Major depressive disorder, single episode", "F32", "Mental", "Depression", "MBD002"),
    ("J690", "Pneumonitis due to inhalation of food and vomit", "J69", "Respiratory", "Pneumonitis", "RSP004"),
    ("Z1589", "Genetic susceptibility to other disease", "Z15", "Factors", "Genetic", "FAC021"),
    ("C50911", "Malignant neoplasm of unsp site of right female breast", "C50", "Neoplasms", "Breast", "NEO030"),
    ("T401X1A", "Poisoning by heroin, accidental, initial", "T40", "Injury", "Poisoning", "INJ022"),
    ("H8101", "Ménière\u2019s disease, right ear", "H81", "Ear", "Vertigo", "EAR006"),
]
_PROCS = [  # CPT/HCPCS code, name, families 1-3
    ("99213", "Office/outpatient visit est", "E&M", "Office Visits", "Established"),
    ("99214", "Office/outpatient visit est", "E&M", "Office Visits", "Established"),
    ("80053", "Comprehensive metabolic panel", "Lab", "Chemistry", "Panels"),
    ("85025", "Complete CBC w/auto diff WBC", "Lab", "Hematology", "CBC"),
    ("81220", "CFTR gene com variants", "Lab", "Molecular Pathology", "Tier 1"),
    ("81211", "BRCA1&2 seq & com dup/del", "Lab", "Molecular Pathology", "Tier 1"),
    ("93000", "Electrocardiogram complete", "Medicine", "Cardiovascular", "ECG"),
    ("71046", "X-ray exam chest 2 views", "Radiology", "Diagnostic", "Chest"),
    ("G0121", "Colon ca scrn not hi rsk ind", "HCPCS", "Screening", "Colonoscopy"),
    ("J1100", "Dexamethasone sodium phos", "HCPCS", "Drugs", "Injections"),
]
_PCS = [("0DTJ4ZZ", "Resection of Appendix, Perc Endo"), ("02703ZZ", "Dilation of Coronary Artery, Perc"),
        ("0SRC0J9", "Replacement of R Knee Jt with Synth Sub")]
_MODS = [("25", "Significant, separately identifiable E/M"), ("59", "Distinct procedural service"),
         ("26", "Professional component"), ("TC", "Technical component"), ("GT", "Via interactive telecom")]
_SETTINGS = [
    ("Professional", "P32c - Office/Home Visits - PCP", "P32c - Office Visits - PCP"),
    ("Professional", "P51 - Lab", "P51a - Lab - Office"),
    ("Outpatient", "O16 - Emergency Room", "O16a - ER - Hospital"),
    ("Inpatient", "I11a - Medical - General", "I11a - Medical"),
    ("Ancillary", "P59 - Radiology", "P59b - Radiology - General Diagnostic"),
]
_RX_SETTINGS = [("Prescription Drugs", "RX - Generic", "RX - Generic - Retail"),
                ("Prescription Drugs", "RX - Brand", "RX - Brand - Mail Order")]
# NDC as the feed prints it: each drug has its native hyphenated form (zeros placed so that
# 4-4-2, 5-3-2 and 5-4-1 pad back to 5-4-2).
_DRUGS = [  # drug code (native form), name, GPI, generic name, manufacturer, strength, form, classes 1-3
    ("00093-0058-01", "HYDRALAZINE HYDROCHLORIDE", "36400010100305", "HYDRALAZINE HCL", "TEVA", "25 MG", "TABLET",
     "Cardiovascular", "Antihypertensives", "Vasodilators"),
    ("0406-0484-01", "ACETAMINOPHEN/CODEINE", "65991002050310", "ACETAMINOPHEN-CODEINE", "MALLINCKRODT",
     "300-30 MG", "TABLET", "Analgesics", "Opioid Combinations", "Codeine Combinations"),
    ("00071-0155-23", "LIPITOR®", "39400010100330", "ATORVASTATIN CALCIUM", "PFIZER", "20 MG", "TABLET",
     "Cardiovascular", "Antihyperlipidemics", "HMG CoA Reductase Inhibitors"),
    ("65862-008-01", "METFORMIN HCL", "27250050000320", "METFORMIN HCL", "AUROBINDO", "500 MG", "TABLET",
     "Endocrine", "Antidiabetics", "Biguanides"),
    ("12496-1208-3", "SUBOXONE", "65200010200820", "BUPRENORPHINE-NALOXONE", "INDIVIOR", "8-2 MG", "FILM",
     "Analgesics", "Opioid Partial Agonists", "Buprenorphine Combinations"),
    ("0378-1800-10", "LEVOTHYROXINE SODIUM", "28100010100340", "LEVOTHYROXINE SODIUM", "MYLAN", "50 MCG",
     "TABLET", "Endocrine", "Thyroid Agents", "Thyroid Hormones"),
    ("43547-282-10", "ST. JOHN\u2019S WORT", "99200020000100", "HYPERICUM PERFORATUM", "NATURE\u2019S WAY", "300 MG",
     "CAPSULE", "Herbals", "Herbals", "Herbals"),
    ("00781-5184-01", "SERTRALINE HCL", "58160060100320", "SERTRALINE HCL", "SANDOZ", "50 MG", "TABLET",
     "Psychotherapeutic", "Antidepressants", "SSRIs"),
    ("50580-0488-1", "TYLENOL® EXTRA STRENGTH", "64200010000305", "ACETAMINOPHEN", "MCNEIL", "500 MG",
     "TABLET", "Analgesics", "Analgesics Other", "Acetaminophen"),
    ("00904-5853-61", "CRÈME HYDROCORTISONE", "90550075003720", "HYDROCORTISONE", "MAJOR", "1 %", "CREAM",
     "Dermatologicals", "Corticosteroids", "Low Potency"),
]
_NDC_GARBAGE = ["UNKNOWN", "N/A", "0", "12345-678", "ABCDE-1234-12", "000000000000"]
_BAD_AMOUNTS = ["N/A", "12.3.4", "$15.00", "1,234.00", "abc"]
_SENTINELS = {
    "age": ["", "999", "-1", "abc", "Unknown", "N/A"],
    "gender": ["", "U", "Unknown", "N/A", "NULL"],
    "other": ["", "Unknown", "N/A", "NULL", "UNK"],
}


class _Pools:
    """Arrow arrays of every pool, built once per ``generate`` call."""

    def __init__(self, seed: int) -> None:
        rnd = random.Random(f"providers-{seed}")
        provs = []
        for i in range(300):
            spec, tax = rnd.choice(_SPECIALTIES)
            fips, county, state, zip3 = rnd.choice(_COUNTIES)
            provs.append((f"{rnd.choice(_NAMES)}" if i % 3 else f"{rnd.choice(_NAMES)} {i}",
                          f"1{rnd.randrange(10**9):09d}", spec, f"{zip3}{rnd.randrange(100):02d}",
                          f"{fips} - {county}", state, rnd.choice(_MSAS), tax, f"{rnd.randrange(10**9):09d}"))
        self.providers = _pool(provs)
        self.counties = _pool([(f"{f} - {n}", s, z) for f, n, s, z in _COUNTIES])
        self.payers = _pool(_PAYERS)
        self.races = _b(_RACES)
        self.dx = _pool([*_DX, ("",) * 6])
        # Code as printed: undotted mostly, dotted, stray characters, or Unknown (one block each).
        variants = [c for c, *_ in _DX] + [f"{c[:3]}.{c[3:]}" if len(c) > 3 else c for c, *_ in _DX]
        variants += [f"Y{c}" for c, *_ in _DX] + [f"{c} - {d.upper()[:20]}" for c, d, *_ in _DX]
        self.dx_variants = _b([*variants, *["Unknown"] * len(_DX), ""])
        self.dx_variant_slot = pa.array([0] * 86 + [1] * 7 + [2] * 3 + [3] * 2 + [4] * 2, pa.int64())
        self.procs, self.pcs, self.mods = _pool(_PROCS), _pool([*_PCS, ("", "")]), _pool([*_MODS, ("N/A",) * 2])
        self.settings, self.rx_settings = _pool(_SETTINGS), _pool(_RX_SETTINGS)
        self.drugs = _pool(_DRUGS)
        self.ndc11 = _b([c.replace("-", "") if len(c) == 13 else _pad_ndc(c) for c, *_ in _DRUGS])
        self.sentinels = {k: _b(v) for k, v in _SENTINELS.items()}
        bands = [b for b in layout.AGE_BANDS if b != "unknown"]
        self.band_of_age = _b([next(b for b in bands if int(b.split("-")[1]) >= a) for a in range(115)])
        self.adult_of_age = _b(["Y" if a >= 18 else "N" for a in range(115)])


def _pad_ndc(code: str) -> str:
    a, b, c = code.split("-")
    return a.zfill(5) + b.zfill(4) + c.zfill(2)


class _Members:
    """Per-member stable demographics; rows ``take`` from these arrays."""

    def __init__(self, n: int, seed: int, pools: _Pools) -> None:
        d = _Draw(seed, "members")
        i = pa.array(range(n), pa.int64())
        # A bijection of [0, 3e9) (multiplier coprime to 3e9): unique 10-digit keys, a third start with 0.
        x = pc.add(pc.multiply(i, 1_234_567_891), _seed(seed, "key-offset") % 3_000_000_000)
        self.key = _num(pc.subtract(x, pc.multiply(pc.divide(x, 3_000_000_000), 3_000_000_000)), 10)
        self.gender = d.pick(_b(["M", "F"]), n, "gender")
        self.race = d.pick(pools.races, n, "race")
        self.birth_year = pc.add(d.idx(n, 93, "birth"), 1922)
        c = d.idx(n, len(_COUNTIES), "county")
        self.county, self.state = pools.counties[0].take(c), pools.counties[1].take(c)
        self.zip = _cat(pools.counties[2].take(c), _num(d.idx(n, 100, "zip"), 2))
        p = d.idx(n, len(_PAYERS), "payer")
        self.payer, self.lob = pools.payers[0].take(p), pools.payers[1].take(p)
        self.hispanic = d.pick(_b(["N", "N", "N", "Y", "U"]), n, "hispanic")
        # Pharmacy feeds often lack race entirely for a member: imputation must borrow it.
        self.rx_no_race = d.mask(n, 0.3, "rx-no-race")


# ---------------------------------------------------------------------------------------------
# Rows


def _missing(values: pa.Array, d: _Draw, n: int, name: str, sentinels: pa.Array) -> pa.Array:
    """Replace a realistic share of values with the feed's sentinels (empty, Unknown, N/A, ...)."""
    return pc.if_else(d.mask(n, MISSING_RATE, f"{name}-missing"), d.pick(sentinels, n, f"{name}-sentinel"), values)


def _money(d: _Draw, n: int, name: str, max_dollars: int, pools: _Pools) -> pa.Array:
    dollars = d.idx(n, max_dollars, f"{name}-dollars")
    text = _cat(pc.if_else(d.mask(n, 0.03, f"{name}-neg"), b"-", b""),
                pc.if_else(pc.equal(dollars, 0), b"", _num(dollars)), b".", _num(d.idx(n, 100, f"{name}-c"), 2))
    text = pc.if_else(d.mask(n, 0.08, f"{name}-zero"), b".00", text)  # denied and zero-paid lines
    bad = d.pick(_b(_BAD_AMOUNTS), n, f"{name}-badv")
    return pc.if_else(d.mask(n, 0.002, f"{name}-bad"), bad, text)


def _provider(cols: dict[str, pa.Array], role: str, pools: _Pools, d: _Draw, n: int, *, named: bool) -> None:
    p = d.idx(n, len(pools.providers[0]), role)
    names = ("name", "npi", "specialty", "zip", "county", "state", "msa", "taxonomy", "tin")
    for k, col in zip(names, pools.providers, strict=True):
        if named or k != "name":
            cols[f"{role}_provider_{k}"] = col.take(p)


def _rows(data_type: str, n: int, d: _Draw, ctx: _Ctx, *, window: tuple[int, int],
          claim_base: int) -> dict[str, pa.Array]:
    """One chunk of records as binary columns keyed by snake_case name."""
    pools, members = ctx.pools, ctx.members
    m = d.idx(n, len(members.key), "member")
    days = pc.add(d.idx(n, window[1], "day"), window[0])
    date = pc.cast(pc.cast(days, pa.int32()), pa.date32())
    year = pc.year(date)
    ymd = pc.add(pc.add(pc.multiply(year, 10000), pc.multiply(pc.month(date), 100)), pc.day(date))
    age = pc.subtract(year, members.birth_year.take(m))
    sent = pools.sentinels
    race = members.race.take(m)
    if data_type == "pharmacy":
        race = pc.if_else(members.rx_no_race.take(m), b"", race)
    cols: dict[str, pa.Array] = {
        "incurred_date": _num(ymd),
        "claim_id": _num(pc.add(pa.array(range(n), pa.int64()), claim_base)),
        "mi_person_key": members.key.take(m),
        "payer_lob": members.lob.take(m),
        "payer_type": _missing(members.payer.take(m), d, n, "payer", sent["other"]),
        "claim_status": d.pick(_b(["01 - Paid as Primary"] * 8 + ["02 - Paid as Secondary", "04 - Denied"]),
                               n, "status"),
        "primary_insurance_flag": d.pick(_b(["Y", "Y", "Y", "N"]), n, "pif"),
        "member_zip_code_dos": _missing(members.zip.take(m), d, n, "zip", sent["other"]),
        "member_county_dos": _missing(members.county.take(m), d, n, "county", sent["other"]),
        "member_state_enroll": members.state.take(m),
        "member_age_dos": _missing(_num(age), d, n, "age", sent["age"]),
        "member_age_band_dos": pools.band_of_age.take(age),
        "adult_flag": pools.adult_of_age.take(age),
        "member_gender": _missing(members.gender.take(m), d, n, "gender", sent["gender"]),
        "member_race": _missing(race, d, n, "race", sent["other"]),
        "hispanic_indicator": members.hispanic.take(m),
    }
    _provider(cols, "billing", pools, d, n, named=data_type == "medical")
    _provider(cols, "service", pools, d, n, named=True)
    if data_type == "pharmacy":
        s = d.idx(n, len(pools.rx_settings[0]), "setting")
        cols.update(zip(("hcg_setting", "hcg_line", "hcg_detail"), (c.take(s) for c in pools.rx_settings),
                        strict=True))
        g = d.idx(n, len(_DRUGS), "drug")
        fields = ("drug_code", "drug_name", "gpi", "gpi_generic_name", "manufacturer", "strength", "dosage_form",
                  "therapeutic_class_1", "therapeutic_class_2", "therapeutic_class_3")
        cols.update(zip(fields, (c.take(g) for c in pools.drugs), strict=True))
        ndc11 = pools.ndc11.take(g)
        cols["ndc"] = ndc11
        form = d.u(n, "ndc-form")  # native hyphenated form, plain 11 digits, or garbage
        garbage = d.pick(_b(_NDC_GARBAGE), n, "ndc-garbage")
        cols["drug_code"] = pc.if_else(pc.less(form, 0.6), cols["drug_code"],
                                       pc.if_else(pc.less(form, 0.95), ndc11, garbage))
        cols["total_allowed"] = _money(d, n, "allowed", 400, pools)
        cols["total_rx_paid"] = _money(d, n, "paid", 300, pools)
        cols["total_utilization"] = d.pick(_b(["30", "60", "90", "30.000", "1", "28"]), n, "qty")
        cols["total_rx_days_supply"] = d.pick(_b(["30", "30", "90", "7", "14", "28"]), n, "days")
        return cols
    s = d.idx(n, len(pools.settings[0]), "setting")
    cols.update(zip(("hcg_setting", "hcg_line", "hcg_detail"), (c.take(s) for c in pools.settings), strict=True))
    cols["cchg_label"] = d.pick(_b(["Healthy", "Diabetes", "Heart Failure", "Behavioral Health", "Cancer"]),
                                n, "cchg")
    cols["cchg_grouping"] = d.pick(_b(["100 - Healthy", "500 - Chronic", "600 - Complex Chronic"]), n, "cchgg")
    cols["place_of_service"] = d.pick(_b(["11", "11", "11", "22", "23", "21", "81"]), n, "pos")
    inpatient = d.mask(n, 0.1, "inpatient")
    for name, inp, other in (("bill_type_id", "0111", "N/A"), ("bill_type_class", "Hospital Inpatient", "N/A"),
                             ("bill_type_description", "Admit through Discharge", "N/A"),
                             ("revenue_code", "0450", ""), ("admit_type", "1 - Emergency", "N/A"),
                             ("drg_code", "291", "N/A"), ("drg_desc", "HEART FAILURE & SHOCK W MCC", "N/A"),
                             ("drg_type", "MS-DRG", "N/A")):
        cols[name] = pc.if_else(inpatient, inp.encode(), other.encode())
    present = (0.97, 0.75, 0.55, 0.4, 0.3, 0.2, 0.15, 0.1, 0.07, 0.05)
    ordinals = ("primary", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
    ndx, npcs = len(_DX), len(_PCS)
    for j, (o, p) in enumerate(zip(ordinals, present, strict=True)):
        # Absent codes index the empty entry each pool carries at its end (cheaper than if_else).
        c = pc.if_else(d.mask(n, p, f"dx{j}"), d.idx(n, ndx, f"dxc{j}"), ndx)
        slot = pools.dx_variant_slot.take(d.idx(n, 100, f"dxv{j}"))
        cols[f"{o}_icd_diagnosis_code"] = pools.dx_variants.take(
            pc.if_else(pc.equal(c, ndx), 5 * ndx, pc.add(pc.multiply(slot, ndx), c)))
        cols[f"{o}_icd_diagnosis_desc"] = pools.dx[1].take(c)
        cols[f"{o}_icd_rollup"] = pools.dx[2].take(c)
        if j == 0:
            for lvl in range(3):
                cols[f"primary_icd_ccs_level_{lvl + 1}"] = pools.dx[3 + lvl].take(c)
        k = pc.if_else(pc.and_(inpatient, d.mask(n, 0.6 / (j + 1), f"pcs{j}")), d.idx(n, npcs, f"pcsc{j}"), npcs)
        cols[f"{o}_icd_procedure_code"] = pools.pcs[0].take(k)
        cols[f"{o}_icd_procedure_desc"] = pools.pcs[1].take(k)
    q = d.idx(n, len(_PROCS), "proc")
    proc_fields = ("procedure_code", "procedure_name", "procedure_family_1", "procedure_family_2",
                   "procedure_family_3")
    cols.update(zip(proc_fields, (c.take(q) for c in pools.procs), strict=True))
    for i, p in ((1, 0.2), (2, 0.05)):
        k = pc.if_else(d.mask(n, p, f"mod{i}"), d.idx(n, len(_MODS), f"modc{i}"), len(_MODS))
        cols[f"cpt_mod_{i}_code"], cols[f"cpt_mod_{i}_desc"] = pools.mods[0].take(k), pools.mods[1].take(k)
    cols["total_allowed"] = _money(d, n, "allowed", 2000, pools)
    cols["total_paid"] = _money(d, n, "paid", 1500, pools)
    cols["total_utilization"] = d.pick(_b(["1", "1", "1", "2", "3", ".00"]), n, "units")
    return cols


# ---------------------------------------------------------------------------------------------
# Files and defects

Item = tuple[str, str, object]  # (row|impute|quirk, reason or quirk, parameter)
_GROUPS: list[tuple[dict[str, bool], list[Item]]] = [
    ({"crlf": True}, [("row", "TOO_FEW_FIELDS", "truncate"), ("row", "INVALID_ENCODING", 0x81),
                      ("row", "DUPLICATE_HEADER", None), ("impute", "MISSING_MEMBER_KEY", b""),
                      ("impute", "INVALID_INCURRED_DATE", b"20190230")]),
    ({"bom": True}, [("row", "TOO_MANY_FIELDS", 1), ("row", "CONTROL_CHARACTER", 0x00),
                     ("quirk", "STRAY_QUOTE", "mid"), ("quirk", "STRAY_QUOTE", "start"),
                     ("quirk", "DUPLICATE_LINE", None), ("impute", "MISSING_MEMBER_KEY", b"   "),
                     ("impute", "INVALID_INCURRED_DATE", b"2019-01-01")]),
    ({"final_newline": False}, [("row", "INVALID_ENCODING", 0x8D), ("row", "INVALID_ENCODING", 0x8F),
                                ("row", "CONTROL_CHARACTER", 0x1B), ("row", "TOO_FEW_FIELDS", "blank"),
                                ("impute", "INVALID_INCURRED_DATE", b"")]),
    ({"blank_final_line": True}, [("row", "INVALID_ENCODING", 0x90), ("row", "INVALID_ENCODING", 0x9D),
                                  ("row", "TOO_MANY_FIELDS", 2), ("quirk", "DUPLICATE_LINE", None),
                                  ("impute", "INVALID_INCURRED_DATE", b"abc")]),
]


@dataclass
class _Plan:
    crlf: bool = False
    bom: bool = False
    final_newline: bool = True
    blank_final_line: bool = False
    items: list[Item] = field(default_factory=list)


def _plans(files: int) -> list[_Plan]:
    plans = [_Plan() for _ in range(files)]
    for g, (features, items) in enumerate(_GROUPS):
        plan = plans[g % files]
        for key, value in features.items():
            # A file cannot both lack its final newline and end with a blank line.
            if not (key == "blank_final_line" and not plan.final_newline):
                setattr(plan, key, value)
        plan.items.extend(items)
    return plans


def _inject(records: list[bytes], plan: _Plan, header: bytes, data_type: str,
            fm: FileManifest) -> list[bytes]:
    """Spread the plan's items over ``records``; returns the physical lines and fills ``fm``."""
    cols = layout.columns(data_type)
    text = cols.index("drug_name" if data_type == "pharmacy" else "service_provider_name")
    sp, key = cols.index("service_provider_name"), cols.index("mi_person_key")
    at: dict[int, list[Item]] = {}
    for k, item in enumerate(plan.items):
        at.setdefault((k + 1) * len(records) // (len(plan.items) + 1), []).append(item)
    out: list[bytes] = []
    for i, record in enumerate(records):
        rec = record
        inserted: list[tuple[bytes, str, str]] = []
        for kind, code, arg in at.get(i, []):
            f = rec.split(b"|")
            if kind == "impute":
                f[key if code == "MISSING_MEMBER_KEY" else 0] = arg  # type: ignore[call-overload]
                rec = b"|".join(f)
                fm.impute_defects.append((len(out) + 2, code))
            elif code == "STRAY_QUOTE":
                f[text if arg == "mid" else sp] = (f[text][:4] + b'"' + f[text][4:]) if arg == "mid" else b'"' + f[sp]
                rec = b"|".join(f)
                fm.quirks.append((len(out) + 2, code))
            elif code == "DUPLICATE_LINE":
                inserted.append((rec, "quirk", code))
            elif code == "DUPLICATE_HEADER":
                inserted.append((header, kind, code))
            elif arg == "blank":
                inserted.append((b"", kind, code))
            elif arg == "truncate":
                inserted.append((b"|".join(f[:-3]), kind, code))
            elif code == "TOO_MANY_FIELDS":
                f[sp] += b" | SUITE 200 | BLDG 4"[: 11 * int(arg)]  # type: ignore[call-overload]
                inserted.append((b"|".join(f), kind, code))
            else:  # INVALID_ENCODING / CONTROL_CHARACTER: one byte planted inside a text field
                f[text] = f[text][:3] + bytes([int(arg)]) + f[text][3:]  # type: ignore[call-overload]
                inserted.append((b"|".join(f), kind, code))
        out.append(rec)
        for line, kind, code in inserted:
            out.append(line)
            (fm.row_defects if kind == "row" else fm.quirks).append((len(out) + 1, code))
    return out


def _write_file(out: Path, rel: str, data_type: str, *, records: int, plan: _Plan, ctx: _Ctx, file_idx: int,
                window: tuple[int, int], header: bytes | None = None) -> FileManifest:
    """Write one extract at ``out / rel``: header, chunks of records, the plan's defects."""
    path = out / rel
    std_header = layout.header_line(data_type).encode("ascii")
    header = header or std_header
    eol = b"\r\n" if plan.crlf else b"\n"
    fm = FileManifest(path=rel, data_type=data_type, records=records, data_lines=0,
                      header_ok=header == std_header, status=None if header == std_header else "SCHEMA_MISMATCH",
                      line_ending="CRLF" if plan.crlf else "LF", bom=plan.bom,
                      final_newline=plan.final_newline, blank_final_line=plan.blank_final_line)
    names = layout.columns(data_type)
    options = pcsv.WriteOptions(include_header=False, delimiter="|", quoting_style="none", eol=eol.decode())
    starts = list(range(0, records, CHUNK_ROWS))

    def build(chunk: int) -> list[pa.Array]:
        n = min(CHUNK_ROWS, records - starts[chunk])
        claim_base = (1 if data_type == "pharmacy" else 2) * 10**11 + file_idx * 10**9 + starts[chunk]
        cols = _rows(data_type, n, _Draw(ctx.seed, data_type, file_idx, chunk), ctx, window=window,
                     claim_base=claim_base)
        return [cols[c] if c in cols else _blank(n) for c in names]

    # Arrow releases the GIL: build chunk k+1 on a helper thread while chunk k is being written.
    with pa.OSFile(str(path), "wb") as fh, ThreadPoolExecutor(max_workers=1) as pool:
        fh.write((b"\xef\xbb\xbf" if plan.bom else b"") + header + eol)
        pending = pool.submit(build, 0) if starts else None
        for chunk in range(len(starts)):
            assert pending is not None
            arrays = pending.result()
            pending = pool.submit(build, chunk + 1) if chunk + 1 < len(starts) else None
            if chunk == 0 and plan.items:
                lines = _inject(pc.binary_join_element_wise(*arrays, b"|").to_pylist(), plan, header, data_type, fm)
                fh.write(eol.join(lines) + eol)
                fm.data_lines += len(lines)
            else:  # the fast path: Arrow's writer over the raw CP1252 bytes (viewed, not decoded)
                pcsv.write_csv(pa.table([a.view(pa.string()) for a in arrays], names=list(names)), fh, options)
                fm.data_lines += len(arrays[0])
        if plan.blank_final_line:
            fh.write(eol)
    if not plan.final_newline and fm.data_lines:
        os.truncate(path, path.stat().st_size - len(eol))
    return fm


@dataclass
class _Ctx:
    seed: int
    pools: _Pools
    members: _Members


def _windows(files: int) -> list[tuple[int, int, str]]:
    """Split the date range into ``files`` windows, each named by the quarter its extract was cut."""
    epoch = dt.date(1970, 1, 1)
    first, total = (FIRST_DAY - epoch).days, (LAST_DAY - FIRST_DAY).days + 1
    out = []
    for k in range(files):
        lo, hi = first + k * total // files, first + (k + 1) * total // files
        end = epoch + dt.timedelta(days=hi - 1)
        out.append((lo, hi - lo, f"Q{(end.month - 1) // 3 + 1}{end.year}"))
    if len({name for *_, name in out}) != files:
        raise ValueError(f"files_per_type={files} is too large: two quarterly files would share a name")
    return out


def generate(outdir: str | Path, rows: int = 20_000, seed: int = 0, defects: bool = False,
             files_per_type: int = 4) -> SampleManifest:
    """Write synthetic raw extracts under ``outdir`` and return (and write) their manifest.

    ``rows`` records go to the quarterly files (≈40 % pharmacy, 60 % medical); with ``defects``
    each type also gets a wrong-header file (20 records), an empty file and a header-only file,
    and the quarterly files receive the injected lines listed in the manifest.
    """
    if rows < 0 or files_per_type < 1:
        raise ValueError(f"rows must be >= 0 and files_per_type >= 1, got {rows} and {files_per_type}")
    out = Path(outdir)
    pools = _Pools(seed)
    ctx = _Ctx(seed, pools, _Members(max(8, rows // 20), seed, pools))
    windows = _windows(files_per_type)
    manifest = SampleManifest(rows=rows, seed=seed, defects=defects)
    rx_rows = rows * 2 // 5
    for data_type, total in (("pharmacy", rx_rows), ("medical", rows - rx_rows)):
        (out / data_type).mkdir(parents=True, exist_ok=True)
        plans = _plans(files_per_type) if defects else [_Plan() for _ in range(files_per_type)]
        for f, (plan, (lo, span, quarter)) in enumerate(zip(plans, windows, strict=True)):
            records = total // files_per_type + (1 if f < total % files_per_type else 0)
            if records <= len(plan.items):
                raise ValueError(f"defects=True needs more than {len(plan.items)} records per file; "
                                 f"raise rows (got {rows})")
            rel = f"{data_type}/{FILE_PREFIX[data_type]}_{quarter}.txt"
            manifest.files.append(_write_file(out, rel, data_type, records=records, plan=plan, ctx=ctx,
                                              file_idx=f, window=(lo, span)))
        if defects:
            manifest.files.extend(_extra_files(out, data_type, ctx, windows[-1][:2]))
    manifest.write(out / "_manifest.json")
    return manifest


def _extra_files(out: Path, data_type: str, ctx: _Ctx, window: tuple[int, int]) -> list[FileManifest]:
    """The file-level defects: wrong header, 0 bytes, header only (followed by a blank final line)."""
    raw = list(layout.raw_columns(data_type))
    if data_type == "pharmacy":
        raw[raw.index("Member Gender")] = "Member Sex"
    else:
        raw[1], raw[2] = raw[2], raw[1]
    prefix = f"{data_type}/{FILE_PREFIX[data_type]}"
    schema = _write_file(out, f"{prefix}_Q22021.txt", data_type, records=20, plan=_Plan(), ctx=ctx, file_idx=97,
                         window=window, header="|".join(raw).encode("ascii"))
    (out / f"{prefix}_Q32021.txt").write_bytes(b"")
    header = layout.header_line(data_type).encode("ascii")
    (out / f"{prefix}_Q42021.txt").write_bytes(header + b"\n\n")
    return [schema,
            FileManifest(f"{prefix}_Q32021.txt", data_type, 0, 0, header_ok=False, status="EMPTY_FILE"),
            FileManifest(f"{prefix}_Q42021.txt", data_type, 0, 0, header_ok=True, status="EMPTY_EXTRACT",
                         blank_final_line=True)]
