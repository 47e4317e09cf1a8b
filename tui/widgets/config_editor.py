"""Config: the file in an editor with odyssey highlighting, errors marked at their lines as you
type (checked by the server's `config_validate`), the diff preview, apply with ctrl+s
(`config_apply`) and the reload result. An external change of the file reloads the editor,
asking first when there are unsaved edits."""

from __future__ import annotations

from typing import Protocol

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.timer import Timer
from textual.widgets import Static, TextArea

from pooler.control import schema
from tui.screens.confirm import ConfirmScreen
from tui.source import ApplyResult, ConfigProblem, Source, Validation, text_hash
from tui.widgets.odyssey_text import OdysseyTextArea


class Dashboard(Protocol):
    """What the pane needs of the app (tui.app.PoolerDashboard, which imports this module)."""

    source: Source
    connected: bool

    def refresh_soon(self) -> object: ...
    def refresh_config(self) -> object: ...


VALIDATE_DELAY = 0.35  # seconds of quiet typing before the text is sent for validation


class ConfigPane(Vertical):
    DEFAULT_CSS = """
    ConfigPane { height: 1fr; }
    ConfigPane #config-state { height: 1; background: $boost; padding: 0 1; }
    ConfigPane #config-state.-invalid { background: $error 40%; }
    ConfigPane OdysseyTextArea { height: 1fr; border: none; padding: 0; }
    ConfigPane OdysseyTextArea:focus { border-left: thick $accent; }
    ConfigPane #config-state.-editing { background: $accent 30%; }
    ConfigPane #config-details-box { height: 6; border-top: solid $primary-muted; }
    ConfigPane #config-details { padding: 0 1; }
    """
    BINDINGS = [  # noqa: RUF012
        # e (or tab) puts the focus in the editor, esc takes it out; the footer shows which
        Binding("e", "edit", "Edit"),
        Binding("escape", "leave_editor", "Leave", priority=True),
        Binding("ctrl+s", "apply", "Apply", priority=True),
        Binding("ctrl+r", "revert", "Revert", show=False, priority=True),  # (in the hint line)
        Binding("f8", "next_error", "Next error", show=False),
    ]

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.path: str | None = None
        self.generation: int | None = None
        self.baseline: str | None = None  # the file as last read from the server
        self.baseline_hash = ""  # what config_apply must be given back
        self.validation: Validation | None = None
        self.validated_text: str | None = None  # the text `validation` is about
        self.validation_note = ""
        self.last_apply: ApplyResult | None = None
        self.applying = False
        self._timer: Timer | None = None
        self._asking = False

    def compose(self) -> ComposeResult:
        yield Static("config: waiting for the pooler…", id="config-state")
        yield OdysseyTextArea("", id="config-text", show_line_numbers=True, tab_behavior="indent")
        with VerticalScroll(id="config-details-box"):
            yield Static("", id="config-details")

    @property
    def dashboard(self) -> Dashboard:
        return self.app  # type: ignore[return-value]

    @property
    def editor(self) -> OdysseyTextArea:
        return self.query_one("#config-text", OdysseyTextArea)

    @property
    def modified(self) -> bool:
        return self.baseline is not None and self.editor.text != self.baseline

    # -- loading ------------------------------------------------------------------------

    def load(self, info: schema.ConfigInfo) -> None:
        """A fresh `config_get`: take it unless the user has edits, then ask."""
        self.path, self.generation = info.path, info.generation
        if self.baseline is None or not self.modified or self.editor.text == info.text:
            if info.text != self.editor.text:
                self._replace(info.text)
            self._set_baseline(info)
            self._show_state()
            if self.validation is None:
                self.schedule_validation(0)
            return
        if info.text == self.baseline:
            self._show_state()
            return
        if self._asking:
            return
        self._asking = True

        def answer(discard: bool | None) -> None:
            self._asking = False
            if discard:
                self._replace(info.text)
                self.notify("Loaded the config file as changed on disk.")
            else:
                self.notify("Kept your edits; applying them replaces the file on disk.")
            self._set_baseline(info)
            self._show_state()

        self.app.push_screen(
            ConfirmScreen(
                f"{info.path} changed on disk and you have unsaved edits.\n"
                "Discard your edits and load the file?",
                yes="Discard and load",
                no="Keep my edits",
            ),
            answer,
        )

    def _set_baseline(self, info: schema.ConfigInfo) -> None:
        self.baseline = info.text
        self.baseline_hash = getattr(info, "hash", "") or text_hash(info.text)

    def _replace(self, text: str) -> None:
        editor = self.editor
        cursor = editor.cursor_location
        editor.load_text(text)
        row = min(cursor[0], editor.document.line_count - 1)
        editor.move_cursor((row, cursor[1]))
        self.schedule_validation(0)

    # -- validation as you type ---------------------------------------------------------

    @on(TextArea.Changed, "#config-text")
    def _text_changed(self) -> None:
        self._show_state()
        self.schedule_validation(VALIDATE_DELAY)

    def schedule_validation(self, delay: float) -> None:
        if self._timer is not None:
            self._timer.stop()
        self._timer = self.set_timer(delay, self._validate_now) if delay else None
        if not delay:
            self._validate_now()

    def _validate_now(self) -> None:
        self._timer = None
        if self.baseline is not None and self.dashboard.connected:
            self.validate(self.editor.text)

    @work(exclusive=True, group="config-validate", exit_on_error=False)
    async def validate(self, text: str) -> None:
        try:
            result = await self.dashboard.source.config_validate(text)
        except Exception as exc:  # disconnected, server error
            result = Validation(
                False, [ConfigProblem(f"validation unavailable: {exc}")], where="unavailable"
            )
        if text != self.editor.text:  # stale: the user typed on
            return
        self.validation = result
        self.validated_text = text
        source = self.dashboard.source
        self.validation_note = ""
        if result.where == "local":
            self.validation_note = "server validation unavailable, checked locally"
            if getattr(source, "server_validates", None) is not False:
                self.validation_note = "checked locally"
        self.editor.set_error_lines(
            {p.line - 1 for p in result.problems if p.line is not None and p.line > 0}
        )
        self._show_state()

    # -- apply --------------------------------------------------------------------------

    def action_apply(self) -> None:
        if self.baseline is None or self.applying:
            return
        if (
            self.validation is not None
            and not self.validation.ok
            and self.validation.where != "unavailable"
        ):
            self.notify("The config has errors; nothing applied.", severity="error")
            return
        self.apply(self.editor.text, self.baseline_hash or text_hash(self.baseline))

    @work(exclusive=True, group="config-apply", exit_on_error=False)
    async def apply(self, text: str, hash: str) -> None:
        self.applying = True
        self._show_state()
        try:
            result = await self.dashboard.source.config_apply(text, hash)
        except Exception as exc:
            result = ApplyResult(False, problems=[ConfigProblem(f"apply failed: {exc}")])
        finally:
            self.applying = False
        self.last_apply = result
        if result.ok:
            self.baseline, self.baseline_hash = text, text_hash(text)
            self.generation = result.generation
            self.notify(f"Applied: generation {result.generation}, {len(result.changes)} changes.")
        elif result.conflict:
            self.notify(
                "The file changed on disk since it was loaded; nothing applied. ctrl+r reloads it.",
                severity="error",
                timeout=8,
            )
        else:
            self.editor.set_error_lines(
                {p.line - 1 for p in result.problems if p.line is not None and p.line > 0}
            )
            self.notify("Reload failed; see the details below the editor.", severity="error")
        self._show_state()
        self.dashboard.refresh_soon()

    def action_revert(self) -> None:
        if self.baseline is not None:
            self._replace(self.baseline)
            self._show_state()
        self.dashboard.refresh_config()

    def action_next_error(self) -> None:
        lines = sorted(self.editor.error_lines)
        if not lines:
            return
        row = self.editor.cursor_location[0]
        target = next((n for n in lines if n > row), lines[0])
        self.editor.move_cursor((target, 0))
        self.editor.focus()

    # -- focus --------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "edit":
            return not self.editor.has_focus
        if action == "leave_editor":
            return self.editor.has_focus
        return True

    def action_edit(self) -> None:
        self.editor.focus()

    def action_leave_editor(self) -> None:
        self.query_one("#config-details-box").focus()

    def on_descendant_focus(self) -> None:
        self._show_state()
        self.refresh_bindings()

    def on_descendant_blur(self) -> None:
        self._show_state()
        self.refresh_bindings()

    # -- display ------------------------------------------------------------------------

    def _show_state(self) -> None:
        state = Text()
        if self.baseline is None:
            state.append("config: waiting for the pooler…", style="dim")
        else:
            state.append(f"{self.path}", style="bold")
            state.append(f"  gen {self.generation}")
            if self.modified:
                state.append("  ● modified", style="bold yellow")
        editing = self.editor.has_focus
        state.append(
            "  ✎ editing (esc leaves)" if editing else "  e edits",
            style="bold" if editing else "dim",
        )
        v = self.validation
        invalid = False
        if self.applying:
            state.append("  applying…", style="bold")
        elif v is not None:
            if v.where == "unavailable":
                state.append("  validation unavailable", style="yellow")
            elif v.ok:
                state.append("  ✓ valid", style="green")
            else:
                invalid = True
                n = len(v.problems)
                state.append(f"  ✗ {n} error{'s' if n != 1 else ''}", style="bold red")
        self.query_one("#config-state", Static).update(state)
        self.query_one("#config-state", Static).set_class(invalid, "-invalid")
        self.query_one("#config-state", Static).set_class(editing and not invalid, "-editing")
        self.query_one("#config-details", Static).update(self._details())

    def _details(self) -> Text:
        out = Text()
        v = self.validation
        if v is not None and not v.ok:
            for p in v.problems:
                where = f"line {p.line}:{p.column} " if p.line else ""
                out.append(f"✗ {where}", style="bold red")
                out.append(f"{p.message}\n")
        elif v is not None and self.modified:
            if v.changes:
                out.append("changes if applied (ctrl+s):\n", style="bold")
                for change in v.changes:
                    style = "yellow" if change.startswith("restart required") else ""
                    out.append(f"  {change}\n", style=style)
            else:
                out.append("no effective changes\n", style="dim")
        hint = "ctrl+s apply · ctrl+r revert · F8 next error"
        if self.validation_note:
            hint += f" · {self.validation_note}"
        out.append(f"{hint}\n", style="dim")
        result = self.last_apply
        if result is not None:
            if result.ok:
                out.append(f"last apply: ok, generation {result.generation}", style="green")
                for change in result.changes:
                    out.append(f"\n  {change}")
            else:
                out.append("last apply: FAILED", style="bold red")
                for p in result.problems:
                    out.append(f"\n  {p}", style="red")
        return out
