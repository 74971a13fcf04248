"""LaMP data: official files, the MTA per-user shape, splits, download, prompts.

Official LaMP: `{split}_questions.json` = [{id, input, profile: [{id, ...fields}]}] and
`{split}_outputs.json` = {"task": "LaMP_k", "golds": [{id, output}]}. The MTA reference also uses
[{user_id, profile, query: [{id, input, gold}]}]. Both load into `User` records. Every record is
validated at this boundary; errors name the file, the record id and the field (`suite.io.DataError`).
"""

from __future__ import annotations

import math
import os
import random
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from suite.io import (
    DataError,
    atomic_write_bytes,
    atomic_write_json,
    check_id,
    check_text_value,
    project_root,
    read_json,
)

# Fields each profile item must carry, and the output kind, per task (SPEC §1).
TASKS: dict[str, dict[str, Any]] = {
    "LaMP_1": {"fields": ["title", "abstract"], "kind": "classification", "labels": ["[1]", "[2]"]},
    "LaMP_2": {
        "fields": ["description", "tag"],
        "kind": "classification",
        "labels": [
            "sci-fi",
            "based on a book",
            "comedy",
            "action",
            "twist ending",
            "dystopia",
            "dark comedy",
            "classic",
            "psychology",
            "fantasy",
            "romance",
            "thought-provoking",
            "social commentary",
            "violence",
            "true story",
        ],
        "label_field": "tag",
    },
    "LaMP_3": {
        "fields": ["text", "score"],
        "kind": "rating",
        "labels": ["1", "2", "3", "4", "5"],
        "label_field": "score",
    },
    "LaMP_4": {"fields": ["text", "title"], "kind": "generation", "output_field": "title"},
    "LaMP_5": {"fields": ["abstract", "title"], "kind": "generation", "output_field": "title"},
    "LaMP_7": {"fields": ["text"], "kind": "generation", "output_field": "text"},
}
TASKS["LaMP_2"]["output_field"] = "tag"
TASKS["LaMP_3"]["output_field"] = "score"

# How one profile item is rendered as text (anchor embedding, BM25 history).
ITEM_TEMPLATES = {
    "LaMP_1": "Paper Title: {title}",
    "LaMP_2": "Description: {description} Tag: {tag}",
    "LaMP_3": "Review: {text} Score: {score}",
    "LaMP_4": "Article: {text} Headline: {title}",
    "LaMP_5": "abstract: {abstract} title: {title}",
    "LaMP_7": "{text}",
}

# For leave-one-out training a profile item becomes a query: the task instruction + its input part.
ITEM_AS_QUERY = {
    "LaMP_1": None,  # citation items carry no second candidate: LaMP_1 profiles are not trainable targets
    "LaMP_2": (
        "Which tag does this movie relate to among the following tags? Just answer with the tag "
        "name without further explanation. tags: [{labels}] description: {description}"
    ),
    "LaMP_3": (
        "What is the score of the following review on a scale of 1 to 5? just answer with 1, 2, 3, "
        "4, or 5 without further explanation. review: {text}"
    ),
    "LaMP_4": "Generate a headline for the following article: {text}",
    "LaMP_5": "Generate a title for the following abstract of a paper: {abstract}",
    "LaMP_7": "Paraphrase the following tweet without any explanation before or after it: {text}",
}

OFFICIAL_URL = "https://ciir.cs.umass.edu/downloads/LaMP"


def task_info(task: str) -> dict[str, Any]:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known: {sorted(TASKS)}")
    return TASKS[task]


@dataclass
class Query:
    id: str
    input: str
    gold: str | None = None


@dataclass
class User:
    user_id: str
    profile: list[dict]
    queries: list[Query] = field(default_factory=list)


def render_item(task: str, item: dict) -> str:
    return ITEM_TEMPLATES[task].format(**{k: str(v) for k, v in item.items()})


def item_query(task: str, item: dict) -> tuple[str, str]:
    """(input, target) for a profile item used as a training query (leave-one-out)."""
    tmpl = ITEM_AS_QUERY[task]
    if tmpl is None:
        raise ValueError(f"{task}: profile items cannot serve as training queries")
    info = task_info(task)
    values = {k: str(v) for k, v in item.items()}
    values["labels"] = ", ".join(info.get("labels", []))
    return tmpl.format(**values), str(item[info["output_field"]])


# Where a task's input content starts: LaMP retrieves profile items with the content alone, not
# with the instruction (LaMP_2's instruction lists all 15 tag names, which would match every item).
CONTENT_MARKERS = {
    "LaMP_2": "description:",
    "LaMP_3": "review:",
    "LaMP_4": "following article:",
    "LaMP_5": "abstract of a paper:",
    "LaMP_7": "before or after it:",
}


def query_content(task: str, query_input: str) -> str:
    """The content of a task input (the movie description, review, article...) without the task
    instruction: the text BM25 retrieval and the anchor-overlap check use. An input without the
    marker (a custom prompt) is used whole."""
    marker = CONTENT_MARKERS.get(task)
    if marker is None:
        return query_input
    i = query_input.lower().find(marker)
    return query_input[i + len(marker) :].strip() if i >= 0 else query_input


def item_content(task: str, item: dict) -> str:
    """A profile item's content field (the part an input of the task would carry)."""
    return str(item.get(task_info(task)["fields"][0], "")) if task in CONTENT_MARKERS else ""


def build_prompt(query_input: str, history: list[str] | None = None) -> str:
    """The MTA prompt: `### User History:` block with rendered items, then the task input."""
    if not history:
        return query_input
    return "### User History:\n" + "\n".join(history) + "\n\n" + query_input


# ----------------------------------------------------------------------------------- validation
def _check_str(file, rid, field_name, value, allow_empty=False):
    if not isinstance(value, str):
        raise DataError(file, rid, field_name, f"expected a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise DataError(file, rid, field_name, "is empty")


def validate_profile_item(file, task: str, qid: str, idx: int, item: Any) -> dict:
    rid = f"{qid} profile[{idx}]"
    if not isinstance(item, dict):
        raise DataError(file, rid, None, f"expected an object, got {type(item).__name__}")
    for f_name in task_info(task)["fields"]:
        if f_name not in item:
            raise DataError(file, rid, f_name, "missing")
        v = item[f_name]
        if isinstance(v, (int, float)) and not isinstance(v, bool) and f_name == "score":
            # a rating is a small number: a 400-digit one (float() would overflow) is bad data
            if isinstance(v, int) and abs(v) > 10**6 or isinstance(v, float) and not math.isfinite(v):
                raise DataError(file, rid, f_name, f"{str(v)[:20]}... is not a rating")
            item = {**item, f_name: str(int(v)) if float(v).is_integer() else str(v)}
            continue
        _check_str(file, rid, f_name, v)
    if task in ("LaMP_2", "LaMP_3"):
        lf = task_info(task)["label_field"]
        if str(item[lf]) not in task_info(task)["labels"]:
            raise DataError(file, rid, lf, f"{item[lf]!r} is not a {task} label")
    return item


def _check_task(file, task: str) -> None:
    if task not in TASKS:
        raise DataError(file, None, "task", f"unknown task {task!r}; known: {sorted(TASKS)}")


def _validate_users(file: Path, task: str, users: list[User]) -> list[User]:
    seen: set[str] = set()
    for u in users:
        for q in u.queries:
            if q.id in seen:
                raise DataError(file, q.id, "id", "duplicate query id")
            seen.add(q.id)
    return users


def load_lamp(questions: str | Path, outputs: str | Path | None, task: str) -> list[User]:
    """Official LaMP files → users. Questions sharing `user_id` are grouped into one user (our
    lamp_like data); without `user_id` each question is its own user, as in official LaMP."""
    questions = Path(questions)
    _check_task(questions, task)
    data = read_json(questions)
    if not isinstance(data, list):
        raise DataError(questions, None, None, "top level must be a list of questions")
    golds: dict[str, str] = {}
    has_outputs = outputs is not None and Path(outputs).exists()
    if has_outputs:
        golds = load_outputs(outputs, task)
    users: dict[str, User] = {}
    for i, rec in enumerate(data):
        if not isinstance(rec, dict):
            raise DataError(questions, f"#{i}", None, "expected an object")
        if "id" not in rec:
            raise DataError(questions, f"#{i}", "id", "missing")
        qid = check_id(questions, f"#{i}", "id", rec["id"])
        if "input" not in rec:
            raise DataError(questions, qid, "input", "missing")
        _check_str(questions, qid, "input", rec["input"])
        if "profile" not in rec:
            raise DataError(questions, qid, "profile", "missing")
        if not isinstance(rec["profile"], list):
            raise DataError(questions, qid, "profile", "expected a list")
        if not rec["profile"]:
            raise DataError(questions, qid, "profile", "is empty: a user needs at least one profile item")
        profile = [validate_profile_item(questions, task, qid, j, it) for j, it in enumerate(rec["profile"])]
        uid = check_id(questions, qid, "user_id", rec["user_id"]) if "user_id" in rec else qid
        user = users.setdefault(uid, User(uid, profile, []))
        user.queries.append(Query(qid, rec["input"], golds.get(qid)))
    if has_outputs:
        missing = [q.id for u in users.values() for q in u.queries if q.gold is None]
        if missing:
            raise DataError(outputs, missing[0], "golds", f"{len(missing)} question(s) have no gold output")
        asked = {q.id for u in users.values() for q in u.queries}
        orphans = [g for g in golds if g not in asked]
        if orphans:
            raise DataError(
                outputs, orphans[0], "id", f"{len(orphans)} gold output(s) answer no question in {questions.name}"
            )
    return _validate_users(questions, task, list(users.values()))


def load_outputs(path: str | Path, task: str) -> dict[str, str]:
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("golds"), list):
        raise DataError(path, None, "golds", 'expected {"task": ..., "golds": [...]}')
    if data.get("task") not in (None, task):
        raise DataError(path, None, "task", f"file is for {data.get('task')!r}, expected {task!r}")
    out: dict[str, str] = {}
    for i, g in enumerate(data["golds"]):
        if not isinstance(g, dict) or "id" not in g:
            raise DataError(path, f"golds[{i}]", "id", "missing")
        gid = check_id(path, f"golds[{i}]", "id", g["id"])
        if "output" not in g:
            raise DataError(path, gid, "output", "missing")
        output = check_text_value(path, gid, "output", g["output"])
        if gid in out:
            raise DataError(path, gid, "id", "duplicate gold id")
        out[gid] = output
    return out


def load_per_user(path: str | Path, task: str) -> list[User]:
    """The MTA reference shape: [{user_id, profile: [...], query: [{id, input, gold}]}]."""
    path = Path(path)
    _check_task(path, task)
    data = read_json(path)
    if not isinstance(data, list):
        raise DataError(path, None, None, "top level must be a list of users")
    users = []
    for i, rec in enumerate(data):
        if not isinstance(rec, dict) or "user_id" not in rec:
            raise DataError(path, f"#{i}", "user_id", "missing")
        uid = check_id(path, f"#{i}", "user_id", rec["user_id"])
        for key in ("profile", "query"):
            if not isinstance(rec.get(key), list) or not rec[key]:
                raise DataError(path, uid, key, "missing or empty list")
        profile = [validate_profile_item(path, task, uid, j, it) for j, it in enumerate(rec["profile"])]
        queries = []
        for j, q in enumerate(rec["query"]):
            if not isinstance(q, dict):
                raise DataError(path, f"{uid} query[{j}]", None, "expected an object")
            for key in ("id", "input"):
                if key not in q:
                    raise DataError(path, f"{uid} query[{j}]", key, "missing")
            qid = check_id(path, f"{uid} query[{j}]", "id", q["id"])
            _check_str(path, qid, "input", q["input"])
            gold = q.get("gold", q.get("output"))
            queries.append(Query(qid, q["input"], None if gold is None else check_text_value(path, qid, "gold", gold)))
        users.append(User(uid, profile, queries))
    return _validate_users(path, task, users)


def save_outputs(path: str | Path, task: str, predictions: dict[str, str]) -> Path:
    """Predictions in the official outputs shape, written atomically."""

    return atomic_write_json(path, {"task": task, "golds": [{"id": k, "output": v} for k, v in predictions.items()]})


# --------------------------------------------------------------------------------------- splits
def time_split(user: User, task: str) -> User:
    """Time-based split: the newest profile item becomes the query, older ones the profile."""
    dated = [it for it in user.profile if "date" in it]
    if len(dated) != len(user.profile) or len(user.profile) < 2:
        raise ValueError(f"user {user.user_id}: time split needs >= 2 items, each with a 'date'")
    items = sorted(
        user.profile, key=lambda it: str(it["date"]) if isinstance(it["date"], str) else f"{it['date']:020d}"
    )
    last = items[-1]
    inp, gold = item_query(task, last)
    return User(user.user_id, items[:-1], [Query(str(last.get("id", f"{user.user_id}-t")), inp, gold)])


def user_split(users: list[User], frac: float, seed: int = 0) -> tuple[list[User], list[User]]:
    """User-based split: disjoint users, deterministic for a seed."""

    ids = sorted(u.user_id for u in users)
    random.Random(seed).shuffle(ids)
    cut = int(round(len(ids) * frac))
    first = set(ids[:cut])
    return [u for u in users if u.user_id in first], [u for u in users if u.user_id not in first]


# ------------------------------------------------------------------------------ download & root
def official_url(task: str, split: str, scheme: str = "user", base_url: str = OFFICIAL_URL) -> tuple[str, str]:
    num = task.split("_")[1]
    root = f"{base_url}/time/LaMP_{num}" if scheme == "time" else f"{base_url}/LaMP_{num}"
    return f"{root}/{split}/{split}_questions.json", f"{root}/{split}/{split}_outputs.json"


def download_lamp(
    task: str,
    split: str,
    cache_dir: str | Path,
    scheme: str = "user",
    base_url: str = OFFICIAL_URL,
    timeout: float = 60.0,
) -> Path:
    """Fetch the official files once into `cache_dir/{scheme}/{task}/` (atomic; cached after)."""
    dest = Path(cache_dir) / scheme / task
    urls = official_url(task, split, scheme, base_url)
    for url, name in zip(urls, (f"{split}_questions.json", f"{split}_outputs.json")):
        target = dest / name
        if target.exists():
            continue
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                atomic_write_bytes(target, r.read())
        except urllib.error.HTTPError as e:
            if name.endswith("outputs.json") and e.code == 404:  # test splits ship no golds
                continue
            raise DataError(url, problem=f"download failed: HTTP {e.code}") from None
        except (urllib.error.URLError, TimeoutError) as e:
            raise DataError(url, problem=f"download failed: {getattr(e, 'reason', e)}") from None
    return dest


def resolve_task_dir(
    task: str,
    split: str,
    data: str | None = None,
    download: bool = True,
    cache_dir: str | Path | None = None,
    scheme: str = "user",
    base_url: str = OFFICIAL_URL,
) -> Path:
    """`data` (explicit) → `../shared/data/lamp_like` beside the project → official download."""
    fname = f"{split}_questions.json"
    if data:
        d = Path(data)
        for cand in (d / task, d):
            if (cand / fname).exists():
                return cand
        raise DataError(d, None, None, f"no {task}/{fname} under the given data root")
    for base in (
        project_root().parent / "shared" / "data" / "lamp_like",
        Path.cwd().parent / "shared" / "data" / "lamp_like",
    ):
        if (base / task / fname).exists():
            return base / task
    if not download:
        raise DataError("../shared/data/lamp_like", None, None, f"{task}/{fname} not found and download is off")
    cache = Path(cache_dir or os.environ.get("LAMP_CACHE", Path.home() / ".cache" / "mta_lamp"))
    return download_lamp(task, split, cache, scheme, base_url)


def load_task_split(task: str, split: str, data: str | None = None, **kw) -> list[User]:
    d = resolve_task_dir(task, split, data, **kw)
    return load_lamp(d / f"{split}_questions.json", d / f"{split}_outputs.json", task)


def most_frequent(values: list[str]) -> str:
    """Most frequent value; ties broken by first occurrence (deterministic)."""
    c = Counter(values)
    best = max(c.values())
    return next(v for v in values if c[v] == best)
