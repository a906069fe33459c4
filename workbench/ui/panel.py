"""The interactive workbench: a form for every Config field, Start/Stop, and live plots.

    from workbench.ui import WorkbenchPanel
    WorkbenchPanel()            # in a notebook cell: shows the panel

Training runs in a background thread so the panel stays responsive; Stop sets the run's stop
flag, which the loop checks between steps, and the run folder is left with status 'stopped';
a kernel sent SIGTERM or SIGHUP (a server shutting down, a job's time limit) does the same
before it ends.
Start on the config of a stopped run (with `out` empty) resumes it in its folder; a changed
config starts a new run; the panel says which. Before a run starts, a config estimated far too
big for the device (over WARN_ABOVE_S) waits for a second Start; after its first steps a run's
estimated time shows under the buttons, and a run estimated over a day stops there until Start
is pressed again; a config estimated to need more memory than the device has available is
refused until Start is pressed again. The runs browser below the plots lists past runs from disk.
"""

from __future__ import annotations

import html
import threading
import traceback
from dataclasses import Field
from pathlib import Path
from typing import Any

import ipywidgets as widgets

from workbench import config as cfg
from workbench.config import Config, ConfigError, config_fields
from workbench.events import CONFIRM_ABOVE_S, ESTIMATE, RUN_END, describe_estimate, format_duration
from workbench.field_help import field_help, field_label
from workbench.presets import PRESETS
from workbench.records import RunFailed, Status, default_out
from workbench.runs import find_resumable, find_same_config
from workbench.ui.live import LivePlots
from workbench.ui.runs_browser import RunsBrowser

CHOICES: dict[str, tuple[Any, ...]] = {
    **cfg.FIELD_CHOICES,
    "aux_depth": tuple(range(cfg.MAX_AUX_DEPTH + 1)),
}
SUGGESTIONS = {"schedule": ["standard", "accelerated", "1,3", "2,4"]}
# each tab's fields, in Config's order (a field's tab is its FieldInfo.group)
TABS: dict[str, list[str]] = {}
for _name, _info in cfg.FIELD_INFO.items():
    TABS.setdefault(_info.group, []).append(_name)
STYLE = {"description_width": "120px"}
FIELD_WIDTH = "330px"
WARN_ABOVE_S = 6 * 3600.0  # a config estimated longer than this asks before it starts


def field_widget(f: Field, value: Any) -> widgets.ValueWidget:
    """The input for one Config field: a short label, and the field's help as its tooltip
    (the same text papermill's parameters cell shows)."""
    common: dict[str, Any] = dict(
        description=field_label(f.name),
        tooltip=f"{f.name}: {field_help(f.name, room=10_000, papermill=False)}",
        style=STYLE,
        layout=widgets.Layout(width=FIELD_WIDTH),
    )
    if f.name in CHOICES:
        return widgets.Dropdown(options=CHOICES[f.name], value=value, **common)
    if f.name in SUGGESTIONS:
        return widgets.Combobox(options=SUGGESTIONS[f.name], value=str(value), **common)
    if f.type == "bool":
        return widgets.Checkbox(value=bool(value), indent=False, **common)
    if f.type == "int":
        return widgets.IntText(value=value, **common)
    if f.type == "float":
        return widgets.FloatText(value=value, **common)
    return widgets.Text(value=str(value), continuous_update=False, **common)


class WorkbenchPanel:
    """Choose a config with widgets, press Start, watch every module learn; Stop any time."""

    def __init__(self, runs_root: str = "runs", **initial: Any):
        config = Config.from_dict(initial)
        self.inputs = {f.name: field_widget(f, getattr(config, f.name)) for f in config_fields()}
        self.preset = widgets.Dropdown(
            options=["(choose a preset)", *PRESETS],
            description="preset",
            tooltip="a paper's experiment or a teaching setup: sets every field",
            style=STYLE,
            layout=widgets.Layout(width=FIELD_WIDTH),
        )
        self.preset.observe(self._apply_preset, names="value")
        self.start_button = widgets.Button(description="Start", button_style="success", icon="play")
        self.stop_button = widgets.Button(
            description="Stop", button_style="danger", icon="stop", disabled=True
        )
        self.keep_runs = widgets.Checkbox(
            value=True, indent=False, description="keep finished runs on the depth plot"
        )
        self.clear_button = widgets.Button(description="Clear overlays")
        self.message = widgets.HTML()
        self.start_button.on_click(lambda _: self.start())
        self.stop_button.on_click(lambda _: self.stop())
        self.clear_button.on_click(lambda _: self.plots.clear_overlays())
        self.plots = LivePlots(config.n_modules)
        self.browser = RunsBrowser(self.plots, runs_root)
        self.thread: threading.Thread | None = None
        self.stop_flag = threading.Event()
        self.signals_caught = False
        self.summary: dict[str, Any] | None = None
        self.confirmed: Config | None = None  # a long run the user chose to go on with
        self.asked: Config | None = None  # the long run that stopped to ask
        self.asked_dir = ""  # and its folder
        self.warned: Config | None = None  # the config whose size warning was shown
        self.memory_refused: Config | None = None  # refused for memory: Start again tries it
        history = widgets.Accordion([self.browser.widget], selected_index=None)
        history.set_title(0, "Past runs")
        self.widget = widgets.VBox(
            [
                self.preset,
                self._tabs(),
                widgets.HBox(
                    [self.start_button, self.stop_button, self.keep_runs, self.clear_button]
                ),
                self.message,
                self.plots.widget,
                history,
            ]
        )

    def _tabs(self) -> widgets.Tab:
        groups = TABS
        tab = widgets.Tab(
            [
                widgets.GridBox(
                    [self.inputs[n] for n in names],
                    layout=widgets.Layout(grid_template_columns="repeat(3, 340px)"),
                )
                for names in groups.values()
            ]
        )
        for i, title in enumerate(groups):
            tab.set_title(i, title)
        return tab

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    # -- config <-> form ------------------------------------------------------------------
    def config(self) -> Config:
        """The Config the form describes (validated: a bad value raises ConfigError)."""
        return Config.from_dict({name: w.value for name, w in self.inputs.items()})

    def set_values(self, values: dict[str, Any]) -> None:
        for name, value in values.items():
            widget = self.inputs[name]
            widget.value = (
                str(value) if isinstance(widget, (widgets.Text, widgets.Combobox)) else value
            )

    def _apply_preset(self, change: dict[str, Any]) -> None:
        if change["new"] in PRESETS:
            # reset to defaults first, so a preset means the same thing whatever came before
            chosen = PRESETS[change["new"]]
            self.set_values({**cfg.DEFAULTS, **chosen.values})
            self.message.value = f"preset <b>{change['new']}</b>: {chosen.description}"

    # -- running --------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    @property
    def runs_root(self) -> Path:
        return Path(self.browser.root.value)

    def start(self) -> None:
        """Validate the form, resume or start the run in a background thread; errors, the
        resume and a size warning show in the panel."""
        if self.running:
            return
        try:
            config = self.config()
        except ConfigError as e:
            self.message.value = f"<span style='color:#b00'>{html.escape(str(e))}</span>"
            return
        if config == self.asked:  # Start again after the question: go on, in the same folder
            config = config if config.out else config.replace(out=self.asked_dir)
            self.confirmed = config
        self.asked = None
        if not config.out:
            config, note = self.choose_folder(config)
            if config is None:
                self.message.value = note
                return
        else:
            note = f"run folder <code>{html.escape(config.out)}</code>"
        if not self.size_ok(config):
            return
        self.message.value = note
        self.stop_flag = threading.Event()
        if not self.signals_caught:  # a kernel told to end (SIGTERM, SIGHUP) stops the run first
            from workbench.training.stop_signals import stop_thread_on_signals

            stop_thread_on_signals(lambda: (self.stop_flag, self.thread))
            self.signals_caught = True
        self.start_button.disabled, self.stop_button.disabled = True, False
        self.thread = threading.Thread(target=self._train, args=(config,), daemon=True)
        self.thread.start()

    def choose_folder(self, config: Config) -> tuple[Config | None, str]:
        """(the config with its run folder, what the panel says): a stopped or interrupted run
        of this config under the runs folder is resumed; a finished one is shown, not rerun
        (None); otherwise a new folder under the runs folder."""
        resumable = find_resumable(self.runs_root, config)
        if resumable is not None:
            return config.replace(out=str(resumable)), (
                f"<b>resuming</b> the stopped run of this config in "
                f"<code>{html.escape(str(resumable))}</code>"
            )
        found = find_same_config(self.runs_root, config)
        finished = [path for path, status in found if status == Status.FINISHED]
        if finished:
            self.browser.refresh()
            self.browser.select.value = (str(finished[0]),)
            self.browser.overlay_selected()
            return None, (
                f"this config already <b>finished</b> in <code>{html.escape(str(finished[0]))}"
                "</code>: shown on the depth plot; change a field (the seed, say) to run again"
            )
        out = str(self.runs_root / Path(default_out(config)).name)
        return config.replace(out=out), f"<b>new run</b> in <code>{html.escape(out)}</code>"

    def size_ok(self, config: Config) -> bool:
        """False (with a warning) the first time Start is pressed on a config estimated over
        WARN_ABOVE_S on the device; pressing Start again goes on."""
        if config == self.warned or config == self.confirmed:
            return True
        from workbench.training.device import resolve_device
        from workbench.training.estimate import prior_estimate

        try:
            device = resolve_device(config.device)
            seconds = prior_estimate(config, device)
        except Exception:  # an estimate is a guide: never refuse a run for it
            return True
        if seconds is None or seconds <= WARN_ABOVE_S:
            return True
        self.warned = config
        self.message.value = (
            f"<span style='color:#b60'>this config would take about <b>{format_duration(seconds)}"
            f"</b> on {device} (estimated from its FLOPs and this device's speed, within a "
            "factor of a few); press <b>Start</b> again to run it anyway, or make it smaller "
            "(n_train, epochs, width)</span>"
        )
        return False

    def stop(self) -> None:
        """Ask the run to stop; it ends after the current step, its folder marked 'stopped'."""
        self.stop_flag.set()
        self.message.value = "stopping after the current step..."

    def _train(self, config: Config) -> None:
        from workbench.training import run_experiment
        from workbench.training.memory_estimate import MemoryRefused

        estimate = [""]
        opening = self.message.value

        def remember(event: str, info: dict[str, Any]) -> None:
            if event == ESTIMATE:
                estimate[0] = describe_estimate(info)
                self.message.value = f"{opening} · {estimate[0]}"
                if info["seconds"] > CONFIRM_ABOVE_S and config != self.confirmed:
                    self.asked = config
                    self.stop_flag.set()
            if event == RUN_END and self.asked is not None:
                self.asked_dir = info["summary"]["run_dir"]
            if event == RUN_END and self.keep_runs.value:
                summary = info["summary"]
                if summary.get("per_module_test_acc"):
                    self.plots.keep(
                        summary["run_dir"],
                        config.to_dict(),
                        summary["per_module_test_acc"],
                        summary.get("per_module_probe_acc") or [],
                    )

        try:
            self.summary = run_experiment(
                config,
                callbacks=[self.plots, remember],
                stop=self.stop_flag,
                check_memory=config.replace(out="") != self.memory_refused,
            )
            self.message.value = f"{opening} · run {self.summary['status']}"
            if self.asked is not None:
                self.message.value = (
                    f"{estimate[0]}: over {format_duration(CONFIRM_ABOVE_S)}, so it stopped to "
                    "ask; press <b>Start</b> again to go on (it resumes)"
                )
        except MemoryRefused as e:  # too big for the device, by its estimate: ask
            self.memory_refused = config.replace(out="")  # a new folder's name may differ
            self.message.value = (
                f"<span style='color:#b00'>{html.escape(str(e))}</span><br>press <b>Start</b> "
                "again to try anyway"
            )
        except (ConfigError, RunFailed) as e:  # one line: refused, diverged, disk full
            self.message.value = f"<span style='color:#b00'>{html.escape(str(e))}</span>"
        except Exception:
            error = html.escape(traceback.format_exc())
            self.message.value = f"<pre style='color:#b00'>{error}</pre>"
        finally:
            self.start_button.disabled, self.stop_button.disabled = False, True
            self.browser.refresh()
