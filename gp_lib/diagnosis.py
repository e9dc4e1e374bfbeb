"""Rank the root causes of a run from its evidence, and rule out what only looks alike.

The core, `diagnose_tables(attempts, frames, checks)`, is a pure function of
the two tables of DESIGN.md and, when there are any, the checks scenarios
judged. It reads only the standard columns (scenario columns such as
`concurrency` add detail when present), so it serves scenario results,
traces imported from JSONL or browser HAR files, and hand-built tables alike.

Root causes and the rules that find them (PROTOCOL.md sections 8 and 9):

- `authentication_not_enforced` (a security finding, always listed first):
  the authentication probes of `gp_lib.discovery` (a token signed with
  another secret, an expired one, none) reached readiness.
- `unreachable`: refused, DNS, TLS, open timeouts, redirects and non-auth HTTP statuses
  instead of the upgrade, in at least half of the attempts; but not upgrades
  refused (HTTP 403/500/503) or stalled by a host whose health routes answer
  and say its services are not ready, which are `service_dependencies`.
- `authentication`: HTTP 401/403 instead of the upgrade, or close 1008 with
  an auth error or reason (a 1008 that names a limit is not auth). Which
  problem it is comes from the error frames, HTTP bodies and close reasons
  (`AUTH_KINDS`: expired token, wrong secret / bad signature, wrong issuer,
  malformed token, no token...). Attempts that sent the token only in the
  `Authorization` header and were rejected for having none (while
  subprotocol offers passed) name a header stripped by a proxy; close 1003 or
  an HTTP 4xx to a `jwt.*` offer names a refused subprotocol offer.
- `race_conditions`: 1011 before the readiness marker (reason naming no other
  cause) among attempts that sent before it, against those that did not
  (`t_first_send_ms` against `t_ready_ms`): at least three times as often.
  Broken down by send delay, and by `concurrency` when that column exists.
- `factory_initialization`: close reasons naming the factory or
  initialization; 1011 before readiness as often for clients that did not
  send early as for those that did (independent of send timing), with the
  `details.error_type` of the error frames before them and what an unhealthy
  `/ws/health` said; `system_status` frames with `factory_status: "error"`.
- `service_dependencies`: upgrades refused or stalled by a host that is up
  but not ready (above); closes saying a service is not ready; agent
  requests met by silence (nothing at all, while the client listened for at
  least `SILENCE_MS` or to its deadline); runs that stop after
  `agent_started`; error frames naming an unavailable service without a
  user-facing message. Graceful "temporarily unavailable, try again" answers
  and fallback completions are the fix, not the fault.
- `missing_events`: runs that finish but lack some of the five events,
  misorder them, leave a tool call open, or reach another user's socket
  (judged by `gp_lib.events`); agent requests never answered before the
  server closed the socket normally (a message loop that dies on every
  message: the real backend's 1000 "main cleanup"). Runs that stop after `agent_started` while
  events reach other users are misrouted, not stalled by a missing service.
- `unknown`: only when none of the above is seen but something is wrong:
  1011s or other abnormal closes, missing readiness markers, invalid frames,
  or failing checks.

Confidence is a noisy-OR of a cause's evidence items, each weighted by its
count or share, capped at 0.99; failing checks of the same scenario add 0.05.
Findings come strongest first; an empty list means nothing wrong was seen.
The strongest finding also says why each other scenario whose checks failed
(and the race, whenever there were 1011s) is ruled out.

Evidence sentence forms, every number counted from the tables:

- "1011 before readiness in 19 of 20 attempts that sent before the readiness
  marker, 0 of 100 that did not"
- "race ruled out: 1011 as often after waiting for readiness (20 of 20) as
  when sending before it (20 of 20) (so its failing checks no_1011_closes
  follow from factory_initialization)"
- "26 of 26 server closes named the factory or initialization, 26 of them
  before readiness ('Factory initialization failed' x26)"
- "silence: 5 of 12 agent requests got no answer at all (5 sent with
  simulate_agent_unavailable or require_llm)"
- "3 of 14 finished runs lacked events (tool_executing missing in 3, ...)"
- "cross-user delivery: 12 events of other users' runs reached 2 users'
  sockets (runs of alice): a security defect"
- "wrong secret (bad signature): 12 of 12 rejections; the server said
  'Authentication failed: bad signature: signed with another secret'"
- "Authorization header stripped by a proxy or load balancer: 8 of 8 attempts
  that sent the token only in the header were rejected for having none,
  while 4 of 4 that offered it as a subprotocol connected"
- "10 of 10 attempts never reached the WebSocket endpoint: 10 refused"

Scenario results (`diagnose`): in live mode every scenario probed one target,
so their tables are pooled and diagnosed together. In reference mode each
scenario's faulty arm is its own reference server with one fault, so each is
diagnosed alone and the findings merged (`merge`): pooling different servers
would blur the contrasts. The faulty arm is read by default (the issue
reproduced); `arm="fixed"` reads the fixed arm, which should give an empty
list. Attempts whose `condition` is a deliberate fault control
(`CONTROL_CONDITIONS`) are never evidence. `combine` does the same for a
batch run, from the notebooks' scraps: in reference mode their own diagnoses
merged, in live mode their traces pooled.
"""

from __future__ import annotations

import functools
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from gp_lib import events, protocol
from gp_lib.discovery import AUTH_PROBES, INTRODUCTION, health_marks
from gp_lib.checks import FAIL, ISSUE_REPRODUCED, Check, status_of
from gp_lib.trace import FRAME_COLUMNS, UNREACHABLE_OUTCOMES, concat, load_jsonl, sent_before_ready

RACE = "race_conditions"
DEPENDENCIES = "service_dependencies"
FACTORY = "factory_initialization"
EVENTS = "missing_events"
AUTHENTICATION = "authentication"
AUTH_NOT_ENFORCED = "authentication_not_enforced"
UNREACHABLE = "unreachable"
UNKNOWN = "unknown"
ROOT_CAUSES = (RACE, DEPENDENCIES, FACTORY, EVENTS, AUTHENTICATION, UNREACHABLE, UNKNOWN, AUTH_NOT_ENFORCED)
SCENARIOS = ROOT_CAUSES[:4]
#: Findings about security: listed first whatever their confidence.
SECURITY = frozenset({AUTH_NOT_ENFORCED})

#: Attempt conditions that point a fault at the target on purpose, as a control: never evidence of the
#: other rules. (`faulty_start`: the factory scenario starts a faulty process before restarting it; the
#: authentication probes send tokens that must be refused.)
CONTROL_CONDITIONS = frozenset({"faulty_start", *AUTH_PROBES})
#: HTTP statuses a server that is up answers an upgrade with while its services are not ready.
NOT_READY_STATUSES = frozenset({403, 500, 502, 503})
#: How long a client must have listened without an answer for its silence to count, ms.
SILENCE_MS = 1000.0
MAX_CONFIDENCE = 0.99

FACTORY_WORDS = ("factory", "initializ")
DEPENDENCY_WORDS = ("not ready", "unavailable", "supervisor", "thread_service", "thread service", "llm",
                    "database", "dependenc")
#: Problem kinds of an authentication rejection, by words in what the server said; the first match wins.
AUTH_KINDS = (
    ("expired token", ("expired", "exp claim")),
    ("wrong secret (bad signature)", ("signature", "secret")),
    ("wrong issuer", ("issuer",)),
    ("token without token_type", ("token_type",)),
    ("token issued in the future (clock skew)", ("future", "clock skew", "not yet valid")),
    ("token older than 24 h", ("older than", "too old")),
    ("malformed token", ("malformed", "not enough segments", "decode", "invalid header", "not a jwt",
                         "invalid token format")),
    ("no token reached the server", ("no token", "missing token", "token required", "token missing",
                                     "authentication required", "authorization required",
                                     "missing authorization", "no authorization", "not authenticated",
                                     "unauthenticated")),
    ("forbidden (permissions)", ("permission", "forbidden")),
)
NO_TOKEN = "no token reached the server"
UNSPECIFIED = "no reason given"
SUBPROTOCOL_REFUSED = 1003


@dataclass
class Finding:
    """One root cause seen in a run, how sure, and why."""

    root_cause: str
    confidence: float
    evidence: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"root_cause": self.root_cause, "confidence": round(self.confidence, 2), "evidence": list(self.evidence)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Finding":
        return cls(str(data["root_cause"]), float(data["confidence"]), list(data.get("evidence", [])))


# -- entry points ------------------------------------------------------------------------------

def diagnose(results: Sequence[Any], arm: str | None = None) -> list[Finding]:
    """Findings from one or more ScenarioResults, strongest first (see the module docstring).

    Args:
        results: scenario results, live or reference mode.
        arm: the arm to read in reference mode ("faulty" or "fixed"); default: the live arm, else the faulty one.
    """
    arms = []
    for result in results:
        chosen = arm if arm in result.observations else "live" if "live" in result.observations else "faulty"
        observation = result.observations.get(chosen)
        if observation is not None:
            arms.append((chosen, *observation.evidence(), {result.scenario: result.arm_checks.get(chosen, [])}))
    return _diagnose_arms(arms)


def diagnose_tables(attempts: pd.DataFrame, frames: pd.DataFrame | None = None,
                    checks: Mapping[str, Iterable[Check | Mapping[str, Any]]] | None = None) -> list[Finding]:
    """Findings from the attempts and frames of one target, strongest first.

    Args:
        attempts: the attempts table (standard columns; scenario columns optional).
        frames: the frames table, or None when only attempts were captured.
        checks: optional checks by scenario name (Check objects or their dicts).
    """
    evidence = _prepare(attempts, frames)
    failing = _failing_checks(checks or {})
    if not len(evidence.attempts):
        return [Finding(UNKNOWN, 0.3, ["no connection attempts to judge"] + _check_sentences(failing))] \
            if failing else []
    security = [j for j in [_not_enforced(evidence)] if j.confidence > 0]
    judged = [_unreachable(evidence), _authentication(evidence), _race(evidence), _factory(evidence),
              _dependencies(evidence), _events(evidence)]
    found = [j for j in judged if j.confidence > 0]
    by_cause = {j.root_cause: j for j in judged}
    if not found:
        unknown = _unknown(evidence, failing)
        return [j.finding() for j in security] + ([unknown.finding()] if unknown.confidence > 0 else [])
    for judgement in found:
        names = failing.get(judgement.root_cause)
        if names:
            judgement.confidence = min(MAX_CONFIDENCE, judgement.confidence + 0.05)
            judgement.evidence.append(f"failing {judgement.root_cause} checks agree: {', '.join(names)}")
    found.sort(key=_strongest_first)
    top = found[0]
    admitted = int(evidence.attempts["admitted"].sum())
    if not admitted:
        if failing:
            top.evidence.append(f"no attempt got past the upgrade and authentication (0 of {len(evidence.attempts)}),"
                                f" so none of the four root causes could show; the failing checks of "
                                f"{', '.join(failing)} follow from {top.root_cause}")
        return [j.finding() for j in security + found]
    for name in SCENARIOS:
        if by_cause[name].confidence > 0:  # found, the top cause among them
            continue
        symptom = name in failing or (name == RACE and evidence.c1011.any())
        if symptom and by_cause[name].ruled_out:
            follows = (f" (so its failing checks {', '.join(failing[name])} follow from {top.root_cause})"
                       if name in failing else "")
            top.evidence.append(by_cause[name].ruled_out + follows)
    return [j.finding() for j in security + found]


def merge(finding_lists: Iterable[Sequence[Finding]]) -> list[Finding]:
    """One list from several diagnoses: per root cause the strongest confidence, evidence pooled."""
    merged: dict[str, Finding] = {}
    for finding in (finding for findings in finding_lists for finding in findings):
        kept = merged.setdefault(finding.root_cause, Finding(finding.root_cause, finding.confidence))
        first, second = (finding, kept) if finding.confidence > kept.confidence else (kept, finding)
        merged[finding.root_cause] = Finding(finding.root_cause, first.confidence,
                                             list(dict.fromkeys([*first.evidence, *second.evidence])))
    return sorted(merged.values(), key=_strongest_first)


def combine(runs: Mapping[str, Mapping[str, Any]], base_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """summary.json's `diagnosis` from the scraps of one batch run's scenario notebooks.

    In reference mode each faulty arm is diagnosed alone, which is exactly what
    each notebook's own `diagnosis` scrap holds: those are merged, and no trace
    is read. In live mode the arms probed one target and are pooled: reads each
    scenario's trace of its live arm (the `traces` scrap) and its checks
    (`arm_checks`), and diagnoses them together as `diagnose` would; when a
    trace file is missing or cannot be read, falls back to that notebook's own
    `diagnosis` scrap.

    Args:
        runs: scraps by scenario name (`mode`, `traces`, `arm_checks`, `diagnosis`).
        base_dir: where relative trace paths start (the notebooks' working directory).
    """
    arms, own_diagnoses = [], []
    for scenario, scraps in runs.items():
        own = [Finding.from_dict(f) for f in scraps.get("diagnosis") or []]
        if scraps.get("mode") != "live":
            own_diagnoses.append(own)
            continue
        paths = [Path(base_dir or ".", p) for p in scraps.get("traces") or [] if str(p).endswith("-live.jsonl")]
        try:
            attempts, frames = load_jsonl(paths[0])
        except (IndexError, OSError, ValueError):  # no trace, or one cut short when its kernel died
            own_diagnoses.append(own)
            continue
        arms.append(("live", attempts, frames, {scenario: list((scraps.get("arm_checks") or {}).get("live", []))}))
    return [f.to_dict() for f in merge([_diagnose_arms(arms), *own_diagnoses])]


def _diagnose_arms(arms: Sequence[tuple[str, pd.DataFrame, pd.DataFrame, Mapping[str, Any]]]) -> list[Finding]:
    """`(arm, attempts, frames, checks)` diagnosed: live arms pooled (they probed one target), every
    other arm alone (its own reference server, see the module docstring), then merged."""
    live = [entry for entry in arms if entry[0] == "live"]
    found = [diagnose_tables(attempts, frames, checks) for name, attempts, frames, checks in arms if name != "live"]
    if live:
        found.append(diagnose_tables(concat(a for _, a, _, _ in live), concat(f for _, _, f, _ in live),
                                     {k: v for *_, checks in live for k, v in checks.items()}))
    return merge(found)


def with_security(verdict: str, findings: Sequence[Mapping[str, Any]], mode: str) -> str:
    """A live run's overall verdict: `fail` when a security finding stands, even if every check passed
    (authentication not enforced is an issue found, whichever scenario's checks it touches)."""
    if verdict == "pass" and mode == "live" and any(f.get("root_cause") in SECURITY for f in findings):
        return "fail"
    return verdict


def findings_table(findings: Sequence[Finding]) -> pd.DataFrame:
    """The diagnosis as a table: rank, root cause, confidence, strongest evidence."""
    rows = [{"rank": n, "root cause": f.root_cause, "confidence": round(f.confidence, 2),
             "strongest evidence": f.evidence[0] if f.evidence else ""} for n, f in enumerate(findings, 1)]
    return pd.DataFrame(rows, columns=["rank", "root cause", "confidence", "strongest evidence"])


def _strongest_first(finding: Finding | _Judgement) -> tuple[bool, float, int]:
    """Sort key: security findings first, then confidence down, then the order of ROOT_CAUSES (names
    from elsewhere last)."""
    cause = finding.root_cause
    return (cause not in SECURITY, -finding.confidence,
            ROOT_CAUSES.index(cause) if cause in ROOT_CAUSES else len(ROOT_CAUSES))


# -- the evidence, prepared once -----------------------------------------------------------------

@dataclass
class _Judgement:
    """One cause's verdict: confidence 0 when not seen, then `ruled_out` says why."""

    root_cause: str
    confidence: float = 0.0
    evidence: list[str] = field(default_factory=list)
    ruled_out: str = ""

    def add(self, weight: float, sentence: str) -> None:
        """One more independent piece of evidence: confidences combine as a noisy-OR."""
        self.confidence = 1.0 - (1.0 - self.confidence) * (1.0 - weight)
        self.evidence.append(sentence)

    def finding(self) -> Finding:
        return Finding(self.root_cause, round(min(self.confidence, MAX_CONFIDENCE), 3), list(self.evidence))


@dataclass
class _Evidence:
    """The tables with the derived columns every rule reads."""

    attempts: pd.DataFrame
    frames: pd.DataFrame
    runs: pd.DataFrame
    received: pd.DataFrame          # received frames, decoded into `message`
    probes: pd.DataFrame            # the authentication probes (gp_lib.discovery): tokens that must be refused
    health: list[dict[str, Any]]    # what the health routes answered (`health` marks)

    @property
    def not_ready_said(self) -> str:
        """What a health route that answered said about services not being ready ("" when none did)."""
        said = [f"{m.get('path')} {m.get('status')}: {m.get('answer')}" for m in self.health if m.get("not_ready")]
        return "; ".join(dict.fromkeys(said))

    @property
    def c1011(self) -> pd.Series:
        return self.attempts["close_code"] == protocol.INTERNAL_ERROR

    @property
    def own_runs(self) -> pd.DataFrame:
        """Runs of the socket's own user (another user's runs seen on a socket left out)."""
        return self.runs[~self.runs["foreign"].astype(bool)]

    @functools.cached_property
    def dropped(self) -> pd.DataFrame:
        """Attempts whose first message went unanswered before a normal close (`_dropped`); two rules read it."""
        return _dropped(self)

    @property
    def leaked(self) -> int:
        """Events that carried another user's user_id."""
        return int(self.runs["foreign_events"].sum())


def _prepare(attempts: pd.DataFrame, frames: pd.DataFrame | None) -> _Evidence:
    attempts = attempts.reset_index(drop=True) if attempts is not None else pd.DataFrame()
    probes = attempts.iloc[0:0]
    if len(attempts) and "condition" in attempts:
        probes = attempts[attempts["condition"].isin(AUTH_PROBES)]
        attempts = attempts[~attempts["condition"].isin(CONTROL_CONDITIONS)].reset_index(drop=True)
    health = health_marks(frames)
    a = pd.DataFrame({"attempt_id": _col(attempts, "attempt_id").astype(str),
                      "user_id": _col(attempts, "user_id").astype(object)})
    for name in ("t_open_ms", "t_ready_ms", "t_first_send_ms", "t_close_ms", "close_code", "handshake_status",
                 "invalid_frames"):
        a[name] = pd.to_numeric(_col(attempts, name), errors="coerce").astype("float64")  # NaN, never NA
    for name in ("outcome", "closed_by", "close_reason", "error", "auth_transport"):
        values = _col(attempts, name).astype(object)
        a[name] = values.where(values.notna(), None)           # None, never NaN (NaN is truthy)
    if "concurrency" in attempts:
        a["concurrency"] = pd.to_numeric(attempts["concurrency"], errors="coerce")
    a["connected"] = a["t_open_ms"].notna() | (a["handshake_status"] == 101)
    a["ready"] = a["t_ready_ms"].notna()
    a["cut"] = a["closed_by"].isin(["server", "none"]) | (
        a["closed_by"].isna() & a["close_code"].notna() & (a["close_code"] != 1000))
    a["reason_class"] = a["close_reason"].map(_reason_class)
    # the scenarios' own traffic: what their checks count, so that a count here and there is one count
    a["traffic"] = ~_col(attempts, "condition").isin([INTRODUCTION, *AUTH_PROBES]).to_numpy()

    frames = frames if frames is not None and len(frames) else pd.DataFrame(columns=list(FRAME_COLUMNS))
    frames = frames.assign(**{name: None for name in FRAME_COLUMNS if name not in frames})
    frames = frames[frames["attempt_id"].astype(str).isin(set(a["attempt_id"]))].copy()
    frames["attempt_id"] = frames["attempt_id"].astype(str)
    frames["t_ms"] = pd.to_numeric(frames["t_ms"], errors="coerce")
    received = frames[frames["direction"] == "received"].copy()
    received["message"] = [protocol.message_from_row(row) for row in received.to_dict(orient="records")]
    a["said"], a["text"] = _attempt_texts(a, received)
    policy = a["close_code"] == protocol.POLICY_VIOLATION
    said_auth = a["text"].map(protocol.names_auth)
    # an unexplained 1008 before readiness is auth_rejected (protocol.is_auth_close); one naming a limit is not
    a["rejected"] = (a["handshake_status"].isin([401, 403]) | (policy & said_auth)
                     | ((a["outcome"] == "auth_rejected") & (~policy | said_auth)))
    status, offered = a["handshake_status"], a["auth_transport"].isin(["both", "subprotocol"])
    a["offer_refused"] = (a["close_code"] == SUBPROTOCOL_REFUSED) | (
        offered & status.between(400, 499) & ~status.isin([401, 403, 404]))
    # an upgrade refused or stalled by a host that is up but whose services are not ready (the real backend's
    # readiness guard, docs/protocol.md section 10): service_dependencies, neither unreachable nor auth
    not_ready = any(m.get("not_ready") for m in health) and any(m.get("status") is not None for m in health)
    refused = ~a["connected"] & (a["handshake_status"].isin(NOT_READY_STATUSES) | (a["outcome"] == "open_timeout"))
    a["not_ready_refusal"] = refused & (not_ready | a["text"].map(_names_dependency).astype(bool)) & ~said_auth
    a["rejected"] &= ~a["not_ready_refusal"]
    a["admitted"] = a["connected"] & ~a["rejected"]
    a["early"] = a["admitted"] & sent_before_ready(a)
    # only the sockets that saw a run event: run_table walks socket by socket, ten times slower on a race storm
    with_runs = set(received.loc[received["type"].isin(protocol.RUN_EVENT_TYPES), "attempt_id"])
    users = attempts[[c for c in ("attempt_id", "user_id", "server_user") if c in attempts]].astype(object)
    users = users.assign(attempt_id=users["attempt_id"].astype(str)) if "attempt_id" in users else a[["attempt_id"]]
    runs = events.run_table(frames[frames["attempt_id"].isin(with_runs)], users)
    return _Evidence(a, frames, runs, received, probes, health)


def _col(table: pd.DataFrame, name: str) -> pd.Series:
    if name in table:
        return table[name]
    return pd.Series([None] * len(table), index=table.index, dtype="object")


def _by_id(attempts: pd.DataFrame) -> pd.DataFrame:
    """Attempts indexed by id (the first of any duplicated id)."""
    return attempts.drop_duplicates("attempt_id").set_index("attempt_id")


def _server_closes(a: pd.DataFrame, cause: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the closes the server made, those whose reason names `cause`)."""
    closes = a[a["cut"] & a["close_code"].notna() & a["traffic"]]
    return closes, closes[closes["reason_class"] == cause]


def _contrast(a: pd.DataFrame, hit: pd.Series) -> tuple[int, int, int, int]:
    """`hit` among attempts that sent before readiness and among admitted ones that did not:
    (hits, attempts) of each."""
    early, waited = a["early"] & a["traffic"], a["admitted"] & ~a["early"] & a["traffic"]
    return int((hit & early).sum()), int(early.sum()), int((hit & waited).sum()), int(waited.sum())


def _names_dependency(text: Any) -> bool:
    return isinstance(text, str) and any(word in text.lower() for word in DEPENDENCY_WORDS)


def _reason_class(reason: Any) -> str | None:
    text = reason.lower() if isinstance(reason, str) else ""
    if any(word in text for word in FACTORY_WORDS):
        return FACTORY
    if any(word in text for word in DEPENDENCY_WORDS):
        return DEPENDENCIES
    return None


def _failing_checks(checks: Mapping[str, Iterable[Check | Mapping[str, Any]]]) -> dict[str, list[str]]:
    """`{scenario: [names of failed checks]}`, the issue_reproduced summary left out."""
    as_dicts = {scenario: [c.to_dict() if isinstance(c, Check) else c for c in found]
                for scenario, found in checks.items()}
    failing = {scenario: [c["name"] for c in found if status_of(c) == FAIL and c["name"] != ISSUE_REPRODUCED]
               for scenario, found in as_dicts.items()}
    return {scenario: names for scenario, names in failing.items() if names}


def _check_sentences(failing: Mapping[str, list[str]]) -> list[str]:
    return [f"failing {scenario} checks: {', '.join(names)}" for scenario, names in failing.items()]


# -- the rules ----------------------------------------------------------------------------------------

def _unreachable(ev: _Evidence) -> _Judgement:
    a = ev.attempts
    judgement = _Judgement(UNREACHABLE)
    failed = a[a["outcome"].isin(UNREACHABLE_OUTCOMES) & ~a["handshake_status"].isin([401, 403]) & ~a["offer_refused"]
               & ~a["not_ready_refusal"]]
    share = _share(len(failed), len(a))
    if not len(failed) or share < 0.5:
        return judgement
    kinds = Counter(f"HTTP {int(s)} redirect, not followed (it would carry the credentials)" if o == "redirected"
                    else f"HTTP {int(s)} instead of the upgrade" if pd.notna(s) else str(o)
                    for o, s in zip(failed["outcome"], failed["handshake_status"]))
    judgement.confidence = 1.0 if len(failed) == len(a) else 0.9 * share
    judgement.evidence.append(f"{len(failed)} of {len(a)} attempts never reached the WebSocket endpoint: "
                              + ", ".join(f"{n} {kind}" for kind, n in kinds.most_common()))
    first = failed["error"].dropna()
    if len(first):
        judgement.evidence.append(f"first error: {first.iloc[0]}")
    return judgement


def _authentication(ev: _Evidence) -> _Judgement:
    a = ev.attempts
    judgement = _Judgement(AUTHENTICATION)
    texts, rejected, policy = a["text"], a["rejected"], a["close_code"] == protocol.POLICY_VIOLATION
    refused_offer = a["offer_refused"]
    if not rejected.any() and not refused_offer.any():
        return judgement
    share = _share(int(rejected.sum() + refused_offer.sum()), len(a))
    judgement.confidence = 0.6 + 0.35 * share
    if rejected.any():
        http = int(a.loc[rejected, "handshake_status"].isin([401, 403]).sum())
        closes = int((rejected & policy).sum())
        judgement.evidence.append(f"{int(rejected.sum())} of {len(a)} attempts were rejected by authentication: "
                                  f"{http} HTTP 401/403 instead of the upgrade, {closes} closed 1008")
        kinds = pd.Series([_auth_kind(t) for t in texts[rejected]], index=texts[rejected].index)
        stripped = _stripped_header(a, rejected, kinds)
        if stripped:
            judgement.evidence.append(stripped)
        for kind, n in kinds.value_counts().items():
            if stripped and kind == NO_TOKEN:
                continue
            quote = _quote(a.at[kinds[kinds == kind].index[0], "said"])
            judgement.evidence.append(f"{kind}: {n} of {int(rejected.sum())} rejections"
                                      + (f"; the server said {quote}" if quote else ""))
    if refused_offer.any():
        judgement.evidence.append(f"subprotocol offer refused: {int(refused_offer.sum())} of {len(a)} attempts that "
                                  "offered the token as a jwt.* subprotocol got close 1003 or an HTTP 4xx; send it "
                                  "in the Authorization header only (auth_transport=header)")
    return judgement


def _stripped_header(a: pd.DataFrame, rejected: pd.Series, kinds: pd.Series) -> str:
    """The sentence naming a stripped Authorization header, or "" when the evidence does not say so."""
    transport = a["auth_transport"]
    header_only = transport == "header"
    no_token = pd.Series(False, index=a.index)
    unexplained_401 = (kinds == UNSPECIFIED) & a.loc[kinds.index, "handshake_status"].eq(401)
    no_token[kinds.index] = (kinds == NO_TOKEN) | unexplained_401
    hit = header_only & rejected & no_token
    if not hit.any():
        return ""
    offered = transport.isin(["subprotocol", "both"])
    passed = offered & a["connected"] & ~rejected
    contrast = (f", while {int(passed.sum())} of {int(offered.sum())} that offered it as a subprotocol connected"
                if offered.any() else "; offer it as a subprotocol too (auth_transport=both)")
    return (f"Authorization header stripped by a proxy or load balancer: {int(hit.sum())} of {int(header_only.sum())} "
            f"attempts that sent the token only in the header were rejected for having none"
            + contrast)


def _attempt_texts(a: pd.DataFrame, received: pd.DataFrame) -> tuple[list[str], list[str]]:
    """Per attempt: what the server said (the first error frame's text, else the HTTP error or close
    reason), and all it said, lower-cased (close reason, HTTP error, error frames' codes and texts)."""
    errors: dict[str, list[dict[str, Any]]] = {}
    for attempt_id, message in zip(received["attempt_id"], received["message"]):
        if protocol.is_error(message):
            errors.setdefault(attempt_id, []).append(message)
    said, texts = [], []
    for attempt_id, reason, error in zip(a["attempt_id"], a["close_reason"], a["error"]):
        frames = [(protocol.error_code(m) or "", protocol.message_text(m)) for m in errors.get(attempt_id, [])]
        said.append(next((text for _, text in frames if text), error or reason or ""))
        texts.append(" ".join(str(p) for p in (reason, error, *(f"{c} {t}" for c, t in frames)) if p).lower())
    return said, texts


def _auth_kind(text: str) -> str:
    for kind, words in AUTH_KINDS:
        if any(word in text for word in words):
            return kind
    return UNSPECIFIED


def _race(ev: _Evidence) -> _Judgement:
    a = ev.attempts
    judgement = _Judgement(RACE)
    before = ev.c1011 & ~a["ready"]
    hit = before & a["reason_class"].isna()          # a reason naming the factory or a service is not the race
    hits_e, early, hits_w, waited = _contrast(a, hit)
    rate_e, rate_w = _share(hits_e, early), _share(hits_w, waited)
    if hits_e and rate_w <= rate_e / 3:
        relative = 1 - rate_w / rate_e
        judgement.confidence = 0.55 + 0.4 * relative * _upto(hits_e) if waited else 0.4 + 0.2 * _upto(hits_e)
        missing = "" if waited else " (no attempt waited for readiness: the contrast is missing)"
        judgement.evidence.append(f"1011 before readiness in {hits_e} of {early} attempts that sent before the "
                                  f"readiness marker, {hits_w} of {waited} that did not{missing}")
        judgement.evidence += _race_details(a, hit)
        return judgement
    all_e, _, all_w, _ = _contrast(a, before)
    total_1011 = int(ev.c1011.sum())
    if not early:
        judgement.ruled_out = "race ruled out: no attempt sent before the readiness marker"
    elif not total_1011:
        judgement.ruled_out = f"race ruled out: no 1011 closes, though {early} attempts sent before readiness"
    elif not all_e and not all_w:
        judgement.ruled_out = (f"race ruled out: all {total_1011} 1011 closes came after the readiness marker, "
                               "outside the handshake window")
    elif all_w:
        how = "as often" if _share(all_w, waited) <= _share(all_e, early) * 1.5 else "more often"
        judgement.ruled_out = (f"race ruled out: 1011 {how} after waiting for readiness ({all_w} of {waited}) "
                               f"{'as' if how == 'as often' else 'than'} when sending before it "
                               f"({all_e} of {early})")
    else:
        judgement.ruled_out = (f"race ruled out: the {all_e} 1011 closes before readiness gave reasons naming "
                               "the factory or a service, not the handshake")
    return judgement


def _race_details(a: pd.DataFrame, hit: pd.Series) -> list[str]:
    """When the failing early sends went out, and how the 1011 rate grows with concurrency."""
    details = []
    early = a[a["early"]]
    failing = a[a["early"] & hit]
    delay = (failing["t_first_send_ms"] - failing["t_open_ms"]).dropna()
    ready = a.loc[a["ready"], "t_ready_ms"] - a.loc[a["ready"], "t_open_ms"]
    if len(delay):
        details.append(f"the failing early sends went out {delay.min():.1f} to {delay.max():.1f} ms after the upgrade"
                       + (f"; readiness came a median {ready.median():.1f} ms after it" if len(ready.dropna()) else ""))
    if "concurrency" in a and early["concurrency"].nunique() > 1:
        by_level = early.assign(hit=hit[early.index]).groupby("concurrency")["hit"].agg(["sum", "size"])
        details.append("1011 before readiness among early senders by concurrent connects: " + ", ".join(
            f"{int(row['sum'])} of {int(row['size'])} at {level:g}" for level, row in by_level.iterrows()))
    if len(failing):
        details.append("close reasons: " + _reasons(failing["close_reason"]))
    return details


def _factory(ev: _Evidence) -> _Judgement:
    a = ev.attempts
    judgement = _Judgement(FACTORY)
    server_closes, named = _server_closes(a, FACTORY)
    hit = ev.c1011 & ~a["ready"] & (a["reason_class"] != DEPENDENCIES)
    hits_e, early, hits_w, waited = _contrast(a, hit)
    rate_e, rate_w = _share(hits_e, early), _share(hits_w, waited)
    statuses = [protocol.field(m, "factory_status") for m in ev.received["message"] if m.get("type") == "system_status"]
    status_errors = [m for m in ev.received["message"]
                     if m.get("type") == "system_status" and protocol.field(m, "factory_status") == "error"]
    if len(named):
        judgement.add(0.6 + 0.35 * _share(len(named), max(int(ev.c1011.sum()), len(named))),
                      f"{len(named)} of {len(server_closes)} server closes named the factory or initialization, "
                      f"{int((~named['ready']).sum())} of them before readiness ({_reasons(named['close_reason'])})")
    if hits_w and rate_w * 3 >= rate_e:
        judgement.add(0.3 + 0.4 * rate_w, f"independent of send timing: 1011 before readiness in {hits_w} of "
                      f"{waited} attempts that did not send before the readiness marker, {hits_e} of {early} that did")
    error_types = _error_types(ev, a[hit])
    if error_types and judgement.confidence:
        judgement.evidence.append("the error frames before those closes named " + ", ".join(
            f"error_type {name} x{n}" for name, n in error_types.most_common(3)))
    unhealthy = [m for m in ev.health if "error:" in str(m.get("answer", ""))]
    if unhealthy and judgement.confidence:
        judgement.evidence.append(f"{unhealthy[0].get('path')} said {_quote(unhealthy[0].get('answer'))}")
    if status_errors:
        errors = protocol.field(status_errors[0], "errors")
        first = errors[0] if isinstance(errors, list) and errors else ""
        judgement.add(0.5 + 0.4 * _share(len(status_errors), len(statuses)),
                      f"system_status said factory_status 'error' in {len(status_errors)} of {len(statuses)} "
                      "answers to system_health_check" + (f": {_quote(first)}" if first else ""))
    if judgement.confidence:
        return judgement
    status_ok = sum(1 for s in statuses if s == "ok")
    judgement.ruled_out = (f"factory_initialization ruled out: no close named the factory or initialization, "
                           f"{hits_w} of {waited} attempts that did not send before readiness were closed 1011 "
                           f"before it" + (f", {status_ok} of {len(statuses)} system_status answers said "
                                           f"factory_status 'ok'" if statuses else ""))
    return judgement


def _error_types(ev: _Evidence, rows: pd.DataFrame) -> Counter:
    """The `details.error_type` of the error frames the attempts in `rows` received (the real backend
    names the exception that failed a connection's setup this way)."""
    ids = set(rows["attempt_id"])
    found: Counter = Counter()
    for attempt_id, message in zip(ev.received["attempt_id"], ev.received["message"]):
        if attempt_id in ids and protocol.is_error(message):
            details = protocol.field(message, "details")
            name = details.get("error_type") if isinstance(details, dict) else protocol.field(message, "error_type")
            if isinstance(name, str) and name:
                found[protocol.cut_text(name, 60)] += 1
    return found


def _dropped(ev: _Evidence) -> pd.DataFrame:
    """Attempts whose first message the server never answered before closing normally (1000/1001): a
    message loop that dies on what it reads (the real backend's "main cleanup", docs/protocol.md 10)."""
    a, f = ev.attempts, ev.frames
    closed_normally = a["cut"] & a["close_code"].isin([1000, 1001]) & (a["closed_by"] == "server")
    candidates = f.loc[f["attempt_id"].isin(set(a.loc[closed_normally, "attempt_id"])),
                       ["attempt_id", "direction", "type", "t_ms"]]
    by_attempt: dict[str, list[dict[str, Any]]] = {}
    # the received rows with the messages `_prepare` decoded (same index), not decoded again
    for row in candidates.assign(message=ev.received["message"]).to_dict(orient="records"):
        by_attempt.setdefault(row["attempt_id"], []).append(row)
    first_sent = {attempt_id: unanswered[0]["type"] for attempt_id, frames in by_attempt.items()
                  if (unanswered := protocol.unanswered_sends(frames))}
    rows = a[a["attempt_id"].isin(set(first_sent))]
    return rows.assign(request=rows["attempt_id"].map(first_sent).isin(events.REQUEST_TYPES))


def _dependencies(ev: _Evidence) -> _Judgement:
    judgement = _Judgement(DEPENDENCIES)
    server_closes, named = _server_closes(ev.attempts, DEPENDENCIES)
    requests = _requests(ev)
    silent = requests[requests["silent"]]
    own = ev.own_runs
    stalled = _stalled(ev, own)
    leaks = ev.leaked
    unfriendly, graceful = _service_errors(ev)
    refusals = ev.attempts[ev.attempts["not_ready_refusal"]]
    if len(refusals):
        kinds = Counter(f"HTTP {int(s)}" if pd.notna(s) else "stalled past the open timeout"
                        for s in refusals["handshake_status"])
        said = ev.not_ready_said
        judgement.add(0.8 + 0.15 * _share(len(refusals), len(ev.attempts)),
                      f"{len(refusals)} of {len(ev.attempts)} upgrades were refused or stalled ("
                      + ", ".join(f"{kind} x{n}" for kind, n in kinds.most_common()) + ") by a host that is up"
                      + (f": its health routes said services are not ready ({said})" if said else
                         f": the refusal said so ({_quote(refusals['error'].dropna().iloc[0])})"
                         if refusals["error"].notna().any() else ""))
    if len(named):
        by_reason = named.groupby(["close_reason", "close_code"]).size().sort_values(ascending=False).head(3)
        judgement.add(0.75 + 0.2 * _upto(len(named)),
                      f"{len(named)} of {len(server_closes)} server closes said a service was not ready ("
                      + ", ".join(f"{int(c)} {_quote(r)} x{n}" for (r, c), n in by_reason.items()) + ")")
    if len(silent):
        flagged = int(silent["flagged"].sum())
        judgement.add(0.6 + 0.35 * _weight(len(silent), len(requests)),
                      f"silence: {len(silent)} of {len(requests)} agent requests got no answer at all"
                      + (f" ({flagged} sent with simulate_agent_unavailable or require_llm)" if flagged else ""))
    if len(stalled) and not leaks:
        judgement.add(0.6 + 0.35 * _weight(len(stalled), len(own)),
                      f"agent_started then nothing in {len(stalled)} of {len(own)} runs "
                      "(no agent_completed or agent_error; no event reached another user either)")
    if unfriendly:
        judgement.add(0.5 + 0.3 * _upto(len(unfriendly)), f"{len(unfriendly)} error frames named an unavailable "
                      f"service without a user-facing message: {_quote(unfriendly[0])}")
    if judgement.confidence:
        return judgement
    if len(stalled) and leaks:
        judgement.ruled_out = (f"service_dependencies ruled out: the {len(stalled)} runs that stopped after "
                               f"agent_started had their events delivered to other users' sockets ({leaks} "
                               "misrouted events), so they were misrouted, not stalled by a missing service")
    else:
        answered = int(requests["answered"].sum())
        judgement.ruled_out = (f"service_dependencies ruled out: none of {len(requests)} agent requests met silence "
                               f"({answered} answered) and no close or error said a service was not ready"
                               + (f" ({graceful} graceful 'temporarily unavailable' answers: the correct "
                                  "behaviour)" if graceful else ""))
    return judgement


def _requests(ev: _Evidence) -> pd.DataFrame:
    """One row per attempt that sent an agent request: was anything received after it, and was it flagged."""
    f = ev.frames
    sent = f[(f["direction"] == "sent") & f["type"].isin(events.REQUEST_TYPES)]
    columns = ["attempt_id", "t_request_ms", "flagged", "answered", "silent"]
    if not len(sent):
        return pd.DataFrame(columns=columns)
    first = sent.groupby("attempt_id")["t_ms"].min()
    flagged = sent.groupby("attempt_id")["payload"].agg(lambda payloads: any(map(_flagged, payloads)))
    answers = ev.received.loc[ev.received["type"] != "heartbeat", ["attempt_id", "t_ms"]]
    answers = answers.merge(first.rename("t_request"), left_on="attempt_id", right_index=True)
    answered_ids = set(answers.loc[answers["t_ms"] > answers["t_request"], "attempt_id"])
    a = _by_id(ev.attempts)
    rows = []
    for attempt_id, t_request in first.items():
        answered = attempt_id in answered_ids
        rows.append({"attempt_id": attempt_id, "t_request_ms": t_request, "flagged": bool(flagged[attempt_id]),
                     "answered": answered, "silent": not answered and _kept_listening(a.loc[attempt_id], t_request)})
    return pd.DataFrame(rows, columns=columns)


def _flagged(payload: Any) -> bool:
    message = protocol.decode(payload if isinstance(payload, str) else "")
    return any(protocol.field(message, name) is True for name in ("simulate_agent_unavailable", "require_llm"))


def _stalled(ev: _Evidence, own: pd.DataFrame) -> pd.DataFrame:
    """Own runs that never ended although the socket stayed open and the client kept listening."""
    unfinished = own[own["ending"] == "unfinished"]
    a = _by_id(ev.attempts)
    return unfinished[[_kept_listening(a.loc[attempt_id], t_last)
                       for attempt_id, t_last in zip(unfinished["attempt_id"], unfinished["t_last_ms"])]]


def _kept_listening(attempt: pd.Series, since_ms: float) -> bool:
    """The server kept the socket open and the client waited from `since_ms`: to its deadline, or SILENCE_MS."""
    listened = attempt["t_close_ms"] - since_ms if pd.notna(attempt["t_close_ms"]) else 0.0
    return not attempt["cut"] and (attempt["outcome"] == "receive_timeout" or listened >= SILENCE_MS)


def _service_errors(ev: _Evidence) -> tuple[list[str], int]:
    """(texts of error frames naming an unavailable service without a user-facing message,
    how many answers were graceful: such errors that said so, and runs a fallback completed)."""
    unfriendly, graceful = [], int((ev.runs["ending"] == "fallback").sum())
    for message in ev.received["message"]:
        if not protocol.is_error(message) or protocol.is_auth_failure(message):
            continue
        code = protocol.error_code(message) or ""
        text = protocol.message_text(message) or code
        if protocol.is_graceful_text(text):
            graceful += 1
        elif "SERVICE" in code.upper() or any(word in text.lower() for word in DEPENDENCY_WORDS):
            unfriendly.append(text)
    return unfriendly, graceful


def _events(ev: _Evidence) -> _Judgement:
    runs = ev.runs
    judgement = _Judgement(EVENTS)
    dropped = ev.dropped
    requests = dropped[dropped["request"]]
    if len(requests):
        judgement.add(0.7 + 0.25 * _upto(len(requests)),
                      f"messages unanswered: {len(requests)} agent requests got no event at all; the server closed "
                      f"the socket normally right after each ({_reasons(requests['close_reason'])}): its message "
                      "loop fails on what it reads, so no agent event can reach the user")
    if not len(runs):
        if not judgement.confidence:
            judgement.ruled_out = "missing_events ruled out: no agent run was observed, so none could lack events"
        return judgement
    leaking = runs[runs["foreign"].astype(bool) | (runs["foreign_events"] > 0)]
    own = ev.own_runs
    finished = own[own["ending"] == "completed"]
    lacking = finished[finished["missing"].fillna("") != ""]
    misordered = finished[~finished["in_order"].astype(bool)]
    unpaired = finished[~finished["tools_closed"].astype(bool)]
    if len(leaking):
        owners = sorted({str(o) for o in leaking["owner"].dropna()} - set(leaking["socket_user"].dropna()))
        judgement.add(0.85 + 0.1 * _upto(ev.leaked), f"cross-user delivery: {ev.leaked} events of other users' runs "
                      f"reached {leaking['socket_user'].nunique()} users' sockets"
                      + (f" (runs of {', '.join(owners[:3])})" if owners else "") + ": a security defect")
    if len(lacking):
        missing = Counter(name for names in lacking["missing"] for name in names.split(", ") if name)
        judgement.add(0.6 + 0.35 * _weight(len(lacking), len(finished)),
                      f"{len(lacking)} of {len(finished)} finished runs lacked events ("
                      + ", ".join(f"{name} missing in {n}" for name, n in missing.most_common()) + ")")
    if len(misordered):
        first = str(misordered["problems"].iloc[0]).split("; ")[0]
        judgement.add(0.6 + 0.35 * _weight(len(misordered), len(finished)),
                      f"{len(misordered)} of {len(finished)} finished runs had their events out of order "
                      f"(e.g. {first})")
    if len(unpaired) and not len(misordered):
        judgement.add(0.5 + 0.3 * _weight(len(unpaired), len(finished)),
                      f"{len(unpaired)} of {len(finished)} finished runs left a tool_executing without its "
                      "tool_completed")
    if judgement.confidence:
        return judgement
    judgement.ruled_out = (f"missing_events ruled out: {len(finished)} of {len(finished)} finished runs carried all "
                           "five events in order, and no event reached another user's socket"
                           if len(finished) else
                           f"missing_events ruled out: none of {len(own)} runs finished, so none could lack events")
    return judgement


def _unknown(ev: _Evidence, failing: Mapping[str, list[str]]) -> _Judgement:
    """Something is wrong that none of the rules recognise."""
    a = ev.attempts
    judgement = _Judgement(UNKNOWN)
    c1011 = a[ev.c1011]
    if len(c1011):
        judgement.evidence.append(f"{len(c1011)} of {len(a)} attempts closed 1011 without a recognised signature "
                                  f"({_reasons(c1011['close_reason'])}; {int(c1011['ready'].sum())} after readiness)")
    abnormal = a[a["cut"] & ~ev.c1011 & (a["close_code"] != 1000)]
    if len(abnormal):
        codes = abnormal["close_code"].value_counts()
        judgement.evidence.append(f"{len(abnormal)} of {len(a)} attempts ended abnormally: "
                                  + ", ".join(f"{int(code)} ({protocol.CLOSE_CODES.get(int(code), 'other')}) x{n}"
                                              for code, n in codes.items()))
    dropped = ev.dropped
    if len(dropped):
        judgement.evidence.append(f"messages unanswered: the server closed {len(dropped)} sockets normally right "
                                  f"after their first message without answering it ({_reasons(dropped['close_reason'])})")
    no_marker = int((a["outcome"] == "ready_timeout").sum())
    if no_marker:
        judgement.evidence.append(f"{no_marker} of {int(a['connected'].sum())} upgraded attempts got no readiness "
                                  "marker before their deadline")
    invalid = int(a["invalid_frames"].fillna(0).sum())
    if invalid:
        judgement.evidence.append(f"{invalid} frames were not JSON objects with a type")
    judgement.evidence += _check_sentences(failing)
    if judgement.evidence:
        judgement.confidence = 0.5 if len(c1011) or len(dropped) else 0.3
    return judgement


def _not_enforced(ev: _Evidence) -> _Judgement:
    """Tokens that must be refused (gp_lib.discovery's probes) that reached readiness: a security defect."""
    judgement = _Judgement(AUTH_NOT_ENFORCED)
    probes = ev.probes
    if not len(probes):
        return judgement
    ready = pd.to_numeric(probes["t_ready_ms"], errors="coerce").notna()
    accepted = probes[ready]
    if not len(accepted):
        return judgement
    kinds = ", ".join(AUTH_PROBES[c] for c in dict.fromkeys(accepted["condition"]))
    names = sorted({str(u) for u in _col(accepted, "server_user").dropna()})
    judgement.add(0.95, f"authentication not enforced: {len(accepted)} of {len(probes)} connections that must be "
                  f"refused reached readiness ({kinds})"
                  + (f"; the server named them {', '.join(_quote(n) for n in names[:3])}" if names else "")
                  + ": anyone can open a session as some user; a security defect")
    return judgement


# -- small helpers ----------------------------------------------------------------------------------

def _share(part: float, whole: float) -> float:
    return part / whole if whole else 0.0


def _upto(count: float, full: float = 5.0) -> float:
    """How far a count goes towards `full` pieces of evidence, from 0 to 1."""
    return min(1.0, count / full)


def _weight(count: int, total: int) -> float:
    """How strongly `count` defects among `total` speak: a few are enough, a high share more so."""
    return max(_share(count, total), _upto(count, 3))


def _reasons(reasons: pd.Series) -> str:
    """The three most frequent close reasons, quoted, with their counts."""
    counts = reasons.fillna("").value_counts().head(3)
    return ", ".join(f"{_quote(r) or 'empty reason'} x{n}" for r, n in counts.items())


def _quote(text: Any, limit: int = 120) -> str:
    text = " ".join(str(text or "").split())
    if not text:
        return ""
    return "'" + (text if len(text) <= limit else text[:limit - 3] + "...") + "'"
