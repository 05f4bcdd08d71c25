"""Scenarios from where a spec says they are: inline, a file (JSONL, CSV or Parquet, by its
extension) or a Python callable, like inspect_ai's datasets.

```yaml
scenarios:
  - {id: paris, message: "What is the weather in Paris?", reference: snow}
  - id: trip                           # a dialogue: the first message, then scripted turns
    message: "Plan a day in Paris."
    turns:
      - {message: "Make it cheaper."}
      - {message: "Book it.", when: "(?i)museum"}   # sent only if the answer before matches
  - id: refund                         # a dialogue with a simulated user (an agent of the file)
    message: "My order 42 arrived broken."
    user: {agent: customer, goal: "a refund for order 42", facts: {order: 42}}
  - file: more.jsonl                   # one JSON object per line: id, message, turns, reference, metadata
  - file: more.csv                     # a header row; columns other than the fields are metadata
    fields: {message: question, reference: answer}      # column (or JSONL key) of each field
  - file: more.parquet                 # likewise: text columns id, message (reference optional)
  - callable: my_pkg.data:scenarios    # returns an iterable of dicts or Scenario models
    args: {n: 100}                     # keyword arguments
```

Every file is read through the bounded reader (`p2e.textfile`: a regular file of at most 16 MB,
JSONL and CSV in UTF-8), and a Parquet file's values are counted as they are decoded, so a
compressed file holds no more than a text file could. Each bad line (JSONL; CSV: the line a row
starts on), row (Parquet) or item (a callable) is a problem naming its file and place, and the
spec loads whole or not at all. A callable is imported and called, so its code runs, wherever
the spec is loaded (`rollout validate` names it); a resume calls it again, so it should return
the same scenarios each time (an episode's id hashes its scenario's text, not its position).
Scripted `turns` and a simulated `user` are given inline, in JSONL or by a callable; a CSV or
Parquet column named `turns` or `user` is metadata like any other.
"""

from __future__ import annotations

import csv
import importlib
import io
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import from_json

from p2e.errors import InvalidArgument, one_line
from p2e.problems import SHOWN, Problems, error_message
from p2e.runtime.steps import SimulatedUser, Turn
from p2e.store.keys import check_name
from p2e.textfile import MAX_BYTES, read_bytes, read_text

MAX_SCENARIOS = 1_000_000
"""The most scenarios one source (a Parquet file, a callable) gives; a text file's 16 MB holds
fewer. A generator that never ends stops here."""
PARQUET = (".parquet", ".pq")
"""Parquet files' extensions; `.csv` is CSV, and any other is JSONL (as before there were others)."""
WHAT = "scenario file"


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Scenario(_Strict):
    id: str
    message: str = Field(min_length=1)
    """The user's first message."""
    turns: tuple[Turn, ...] = Field((), exclude_if=lambda v: not v)
    """The user's scripted turns after `message` (a multi-turn dialogue); left out of the dump
    when empty, so a single-turn spec keeps its hash."""
    user: SimulatedUser | None = Field(None, exclude_if=lambda v: v is None)
    """The agent that plays the user after `message` (instead of scripted `turns`); left out of
    the dump when absent, so a spec without one keeps its hash."""
    reference: str | None = None
    """The expected answer, for evaluators that compare (`contains`, `exact_match`, a judge)."""
    metadata: dict[str, Any] = {}

    _id = field_validator("id")(classmethod(lambda cls, v: check_name(v)))

    @model_validator(mode="after")
    def _one_user(self) -> Scenario:
        if self.turns and self.user is not None:
            raise ValueError("a scenario has scripted turns or a simulated user, not both; drop one")
        return self


class ScenarioFields(_Strict):
    """Which column (CSV, Parquet) or key (JSONL) holds each field of a scenario, like
    inspect_ai's `FieldSpec`: `{message: question, reference: answer}`."""

    id: str = "id"
    message: str = "message"
    reference: str = "reference"

    @model_validator(mode="after")
    def _distinct(self) -> ScenarioFields:
        columns = [self.id, self.message, self.reference]
        if len(set(columns)) < len(columns):
            raise ValueError(f"id, message and reference need a column each; given: {', '.join(columns)}")
        return self


class ScenarioFile(_Strict):
    file: str
    """Scenarios, one per line or row, relative to the spec; the format by its extension:
    `.jsonl`, `.csv` (a header row; columns other than the fields become metadata) or
    `.parquet` (likewise). See `p2e.rollouts.scenarios`."""
    fields: ScenarioFields = ScenarioFields()


class ScenarioCall(_Strict):
    """A Python callable that returns the scenarios (dicts or `Scenario`s); importing and
    calling it runs its code, as `rollout validate` says."""

    callable: str
    """`package.module:function`, imported from the PYTHONPATH."""
    args: dict[str, Any] = {}
    """Keyword arguments it is called with."""

    @field_validator("callable")
    @classmethod
    def _ref(cls, v: str) -> str:
        module, sep, name = v.partition(":")
        if not sep or not module or not name:
            raise ValueError(f"{v!r}: give the callable as package.module:function")
        return v


class _Bad(NamedTuple):
    """A line or row that is not a scenario, and why."""

    problem: str


Raw = tuple[int, Any]
"""(line, row or item number, what it holds: an object, a row by column, or `_Bad`)."""


class _Stop(Exception):
    """A problem with the source as a whole (`line`: where, in a text file); it is read no further."""

    def __init__(self, message: str, line: int | None = None):
        super().__init__(message)
        self.line = line


class _Found(NamedTuple):
    scenario: Scenario
    place: str
    """Where it is given, for a duplicate's problem: `line 3 of s.csv`."""
    report: Callable[[str], None] | None
    """Adds a problem at it; None for an inline scenario (a duplicate is named at `scenarios`)."""


def load_scenarios(
    items: Iterable[Scenario | ScenarioFile | ScenarioCall], base: Path, problems: Problems
) -> tuple[tuple[Scenario, ...], tuple[str, ...]]:
    """Every scenario of the spec's `scenarios`, in order, and the callables called (their code
    ran); every problem is added to `problems`."""
    found: list[_Found] = []
    called: list[str] = []
    for i, item in enumerate(items):
        if isinstance(item, Scenario):
            found.append(_Found(item, f"scenarios[{i}] of {problems.where}", None))
            continue
        if isinstance(item, ScenarioCall):
            called.append(item.callable)
            source = _Source(problems, i, item.callable, "item")
            rows, table, fields = _call(item), False, ScenarioFields()
        else:
            path = base / item.file
            suffix = path.suffix.lower()
            source = _Source(problems, i, str(path), "row" if suffix in PARQUET else "line")
            rows, table, fields = _read(path, item.fields), suffix in (*PARQUET, ".csv"), item.fields
        found += source.scenarios(rows, table, fields)
    _unique(found, problems)
    return tuple(f.scenario for f in found), tuple(called)


class _Source:
    """One file or callable: its problems, each at its line, row or item."""

    def __init__(self, problems: Problems, index: int, name: str, unit: str):
        self.problems, self.index, self.name, self.unit = problems, index, name, unit
        self.count = 0

    def add(self, n: int | None, message: str, field: str | None = None) -> None:
        self.count += 1
        if self.unit == "line":
            self.problems.other_file(self.name, line=n).add(message, *([field] if field else []))
            return
        at = ", ".join([*([f"{self.unit} {n}"] if n else []), *([f"field {field!r}"] if field else [])])
        message = f"{at}: {message}" if at else message
        if self.unit == "item":
            self.problems.add(f"scenario callable {self.name!r}: {message}", "scenarios", self.index)
        else:
            self.problems.other_file(self.name).add(message)

    def scenarios(self, rows: Iterator[Raw], table: bool, fields: ScenarioFields) -> list[_Found]:
        out: list[_Found] = []
        try:
            for n, raw in rows:
                if isinstance(raw, _Bad):
                    self.add(n, raw.problem)
                elif (scenario := self._scenario(n, raw, table, fields)) is not None:
                    out.append(_Found(scenario, f"{self.unit} {n} of {self.name}", self._at(n)))
                if self.count >= SHOWN:
                    raise _Stop(f"read no further after {SHOWN} problems")
            if not out and not self.count:
                raise _Stop("returned no scenarios" if self.unit == "item" else "no scenarios in it")
        except InvalidArgument as e:  # the file cannot be read: at the spec's line that names it
            self.problems.add(str(e), "scenarios", self.index)
        except _Stop as e:
            self.add(e.line, str(e))
        return out

    def _at(self, n: int) -> Callable[[str], None]:
        return lambda message: self.add(n, message)

    def _scenario(self, n: int, raw: Any, table: bool, fields: ScenarioFields) -> Scenario | None:
        if isinstance(raw, Scenario):
            return raw
        if not isinstance(raw, dict):
            kind = "an object" if self.unit == "line" else "a dict or a p2e Scenario"
            self.add(n, f"a scenario is {kind} (id, message, reference, metadata), not {_kind(raw)}")
            return None
        names = {fields.id: "id", fields.message: "message", fields.reference: "reference"}
        if table:  # a row: the fields' columns, the rest is metadata; an empty reference is none
            data: dict[str, Any] = {"metadata": {k: v for k, v in raw.items() if k not in names}}
            data |= {names[k]: v for k, v in raw.items() if k in names}
            data["reference"] = data.get("reference") or None
        else:
            data = {names.get(k) or k: v for k, v in raw.items()}
        try:
            return Scenario.model_validate(data)
        except ValidationError as e:
            source = {"id": fields.id, "message": fields.message, "reference": fields.reference}
            for err in e.errors():
                loc = [str(p) for p in err["loc"]]
                if loc and loc[0] in source:
                    loc[0] = source[loc[0]]
                self.add(n, error_message(err), ".".join(loc) or None)
            return None


def _unique(found: list[_Found], problems: Problems) -> None:
    """Each repeated id is a problem where it is repeated (an inline one, at `scenarios`)."""
    first: dict[str, str] = {}
    inline: set[str] = set()
    for f in found:
        sid = f.scenario.id
        if sid not in first:
            first[sid] = f.place
        elif f.report is None:
            inline.add(sid)
        else:
            f.report(f"scenario id {sid!r} is repeated (first at {first[sid]}); scenario ids must be unique")
    if inline:
        problems.add(f"scenario ids must be unique; repeated: {', '.join(sorted(inline))}", "scenarios")


def _kind(value: Any) -> str:
    return "null" if value is None else f"a value of type {type(value).__name__}"


# --- the sources ----------------------------------------------------------------------------------


def _read(path: Path, fields: ScenarioFields) -> Iterator[Raw]:
    """The file's rows, read when first asked for (inside the checks of `_Source.scenarios`)."""
    suffix = path.suffix.lower()
    if suffix in PARQUET:
        yield from _parquet(read_bytes(path, WHAT), fields)
    elif suffix == ".csv":
        yield from _csv(read_text(path, WHAT), fields)
    else:
        yield from _jsonl(read_text(path, WHAT))


def _jsonl(text: str) -> Iterator[Raw]:
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                yield n, from_json(line)
            except ValueError as e:
                yield n, _Bad(f"not valid JSON: {str(e).replace(' at line 1 column', ' at column')}")


def _csv(text: str, fields: ScenarioFields) -> Iterator[Raw]:
    if csv.field_size_limit() < MAX_BYTES:  # (the file is bounded; a long message is not an error)
        csv.field_size_limit(MAX_BYTES)
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] | None = None
    start = 1
    try:
        for cells in reader:
            n, start = start, reader.line_num + 1  # a quoted value can span lines: a row is where it starts
            if not any(c.strip() for c in cells):
                continue
            if header is None:
                header = _header(cells, fields, n)
            elif len(cells) != len(header):
                problem = f"{len(cells)} values, but the header has {len(header)} columns"
                yield n, _Bad(f"{problem} (a comma in an unquoted value?)")
            else:
                yield n, dict(zip(header, cells, strict=True))
    except csv.Error as e:
        raise _Stop(f"not valid CSV: {e}", start) from None
    if header is None:
        raise _Stop(
            "no scenarios in it (it is empty; a CSV scenario file starts with a header row: id,message,...)"
        )


def _header(cells: list[str], fields: ScenarioFields, line: int) -> list[str]:
    repeated = sorted({c for c in cells if cells.count(c) > 1})
    if repeated:
        raise _Stop(f"the header names column(s) {', '.join(map(repr, repeated))} more than once", line)
    _columns(cells, fields, line)
    return cells


def _columns(columns: list[str], fields: ScenarioFields, line: int | None = None) -> None:
    for field in ("id", "message"):
        column = getattr(fields, field)
        if column not in columns:
            raise _Stop(
                f"no {column!r} column (the columns are: {', '.join(map(repr, columns)) or 'none'}); "
                f"name one {column!r}, or say which holds the {field}: fields: {{{field}: <column>}}",
                line,
            )


def _parquet(data: bytes, fields: ScenarioFields) -> Iterator[Raw]:
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    if not data:
        raise _Stop("no scenarios in it (the file is empty)")
    if not (data.startswith(b"PAR1") and data.endswith(b"PAR1")):
        raise _Stop(
            "not a Parquet file (it lacks Parquet's PAR1 markers); give a .jsonl or .csv file as such"
        )
    try:
        schema = pq.read_schema(pa.BufferReader(data))
        text = [f.name for f in schema if _is_text(f.type)]
        # Text columns read as dictionaries, so their size is counted before it is decoded (a few
        # compressed bytes can repeat one long value millions of times).
        f = pq.ParquetFile(pa.BufferReader(data), read_dictionary=text)
    except (pa.ArrowException, OSError, ValueError) as e:
        raise _Stop(f"not a Parquet file ({one_line(e)})") from None
    _columns(schema.names, fields)
    for field in ("id", "message", "reference"):
        column = getattr(fields, field)
        if column in schema.names:
            kind = schema.field(column).type
            if not (_is_text(kind) or (field == "reference" and pa.types.is_null(kind))):
                raise _Stop(f"column {column!r} holds {kind}, not text (the {field} is a string)")
    if f.metadata.num_rows > MAX_SCENARIOS:
        raise _Stop(f"{f.metadata.num_rows:,} rows; at most {MAX_SCENARIOS:,} scenarios are read from a file")
    size, n = 0, 0
    try:
        for batch in f.iter_batches(batch_size=1024):
            for column in batch.columns:
                if pa.types.is_dictionary(column.type):
                    lengths = pc.binary_length(column.dictionary).take(column.indices)
                    size += pc.sum(lengths).as_py() or 0
                else:
                    size += column.nbytes
            if size > MAX_BYTES:
                raise _Stop(
                    f"too large: over {MAX_BYTES // 2**20} MB of values once decoded, the most p2e reads"
                )
            for row in batch.to_pylist():
                n += 1
                yield n, row
    except pa.ArrowException as e:
        raise _Stop(f"cannot read it after {n} rows ({one_line(e)}); is it a whole Parquet file?") from None


def _is_text(kind: Any) -> bool:
    import pyarrow as pa

    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return bool(pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind))


def _call(item: ScenarioCall) -> Iterator[Raw]:
    module_name, _, name = item.callable.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        missing = f" (module {e.name!r} is missing)" if e.name and e.name != module_name else ""
        raise _Stop(
            f"cannot import module {module_name!r}{missing}; check the module path and PYTHONPATH"
        ) from None
    except Exception as e:
        raise _Stop(f"module {module_name!r} fails on import: {one_line(e)}") from None
    for part in name.split("."):
        if not hasattr(target, part):
            raise _Stop(f"module {module_name!r} has no {name!r}")
        target = getattr(target, part)
    if not callable(target):
        raise _Stop(f"{name!r} is {_kind(target)}, not a function")
    try:
        result = target(**item.args)
    except Exception as e:
        raise _Stop(f"raised {one_line(e)}") from None
    if isinstance(result, str | bytes | dict | Scenario) or not isinstance(result, Iterable):
        raise _Stop(f"returned {_kind(result)}, not an iterable (list, generator) of scenarios")
    n = 0
    items = iter(result)
    while True:
        try:
            value = next(items)
        except StopIteration:
            return
        except Exception as e:
            raise _Stop(f"raised {one_line(e)} after {n} scenarios") from None
        n += 1
        if n > MAX_SCENARIOS:
            raise _Stop(f"returned more than {MAX_SCENARIOS:,} scenarios, the most read from one source")
        yield n, value
