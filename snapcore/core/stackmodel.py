"""One model of a process's stacks, whichever runtime and reader: threads
(id, name, state where the reader knows it) with their frames, innermost
first (function, file, line, native or not).  `stacks --json` prints it; the
sampling profiler merges it; text and collapsed (flamegraph.pl) output are
drawn from it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field


@dataclass
class Frame:
    function: str
    file: str | None = None
    line: int | None = None
    native: bool = False  # a machine frame (C, C++, the VM's), not the runtime's own

    def label(self, with_line: bool = False) -> str:
        where = self.file.rsplit("/", 1)[-1] if self.file else ""
        if where and with_line and self.line:
            where += f":{self.line}"
        return f"{self.function} ({where})" if where else self.function


@dataclass
class Thread:
    id: int  # the OS thread id (LWP); a goroutine's id for Go
    name: str | None = None
    state: str | None = None  # the reader's word: RUNNABLE, chan receive, has the GIL...
    frames: list[Frame] = field(default_factory=list)  # innermost first


@dataclass
class Stacks:
    lang: str  # native, python, java, go
    reader: str  # gdb, pystack, jhsdb, dlv
    reader_version: str
    runtime_version: str
    threads: list[Thread]
    seconds: float = 0.0  # how long the reader took
    text: str = ""  # the reader's own text (gdb's backtraces for native)

    def to_dict(self) -> dict:
        doc = asdict(self)
        doc.pop("text")
        return doc

    @classmethod
    def from_dict(cls, doc: dict) -> "Stacks":
        """The model back from to_dict's document (a kept NAME.stacks.json)."""
        threads = [Thread(int(t["id"]), t.get("name"), t.get("state"),
                          [Frame(str(f["function"]), f.get("file"), f.get("line"),
                                 bool(f.get("native"))) for f in t.get("frames", [])])
                   for t in doc["threads"]]
        return cls(str(doc["lang"]), str(doc["reader"]), str(doc.get("reader_version", "")),
                   str(doc.get("runtime_version", "")), threads,
                   float(doc.get("seconds", 0.0)))

    def heading(self) -> str:
        runtime = f"{self.lang} {self.runtime_version}".strip()
        unit = "goroutines" if self.lang == "go" else "threads"
        return (f"# {runtime}: {len(self.threads)} {unit} read by {self.reader} "
                f"{self.reader_version} in {self.seconds:.2f} s")

    def render(self, top: int | None = None) -> str:
        """The heading, then gdb's own text for native stacks; for a runtime,
        each thread and its frames, innermost first, like a traceback read
        upwards.  TOP: each thread's innermost frames only (`info`, as
        coredumpctl info shows them)."""
        if self.lang == "native" and self.text and top is None:
            return f"{self.heading()}\n{self.text}"
        lines = [self.heading()]
        for thread in self.threads:
            name = f' "{thread.name}"' if thread.name else ""
            state = f" [{thread.state}]" if thread.state else ""
            lines.append(f"\nThread {thread.id}{name}{state}")
            frames = thread.frames if top is None else thread.frames[:top]
            for frame in frames:
                where = f" at {frame.file}" if frame.file else ""
                if frame.line:
                    where += f":{frame.line}" if frame.file else f" line {frame.line}"
                lines.append(f"    {'(native) ' if frame.native else ''}{frame.function}{where}")
            if len(frames) < len(thread.frames):
                lines.append(f"    ... {len(thread.frames) - len(frames)} outer frames")
        return "\n".join(lines)


def collapsed_stacks(samples: list[Stacks]) -> Counter:
    """flamegraph.pl's input: "thread;outermost;...;innermost" -> count, over
    every thread of every sample.  Lines are left out (a hot loop spans lines)."""
    counts: Counter = Counter()
    for sample in samples:
        for thread in sample.threads:
            if not thread.frames:
                continue
            path = [thread.name or str(thread.id)]
            path += [f.label().replace(";", ":") for f in reversed(thread.frames)]
            counts[";".join(path)] += 1
    return counts


def hottest(samples: list[Stacks], top: int = 10) -> list[tuple[str, int, int]]:
    """(innermost frame, samples it was innermost in, of how many thread-samples)."""
    counts: Counter = Counter()
    total = 0
    for sample in samples:
        for thread in sample.threads:
            if thread.frames:
                counts[thread.frames[0].label()] += 1
                total += 1
    return [(label, n, total) for label, n in counts.most_common(top)]
