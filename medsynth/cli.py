"""`medsynth` subcommands: each builds a job and shows its events as tqdm progress bars."""

from __future__ import annotations

import argparse
import codecs
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from engine.errors import InputError
from engine.evaluation.stages import STEPPED
from engine.io.destination import os_error
from engine.jobs import Checkpoint, Done, Event, Job, Message, Progress, Requests, execute
from engine.runtime.launch import EXIT_INPUT, EXIT_STOPPED

EXIT_CANCELLED = EXIT_STOPPED
# What add_subparsers returns: each subcommand adds its parser to it.
Subcommands = argparse._SubParsersAction


class TqdmView:
    """Turns job events into one progress bar per stage."""

    def __init__(self, quiet: bool = False) -> None:
        from tqdm import tqdm

        self._tqdm = tqdm
        self.bars: dict[str, Any] = {}
        self.quiet = quiet

    def __call__(self, ev: Event) -> None:
        if isinstance(ev, Progress):
            if self.quiet or ev.stage in ("load", "encode", "preview"):
                return
            bar = self.bars.get(ev.stage)
            if bar is None:
                stepped = ev.stage in ("train", "autoencoder", *STEPPED)
                bar = self.bars[ev.stage] = self._tqdm(total=ev.total, desc=ev.stage, unit="step"
                                                       if stepped else "img", dynamic_ncols=True)
                bar.update(ev.done - 1 if stepped else 0)
            bar.update(ev.done - bar.n)
            loss = ev.info.get("loss")
            if loss is not None and loss == loss:
                bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        elif isinstance(ev, Message):
            self.write(ev.text)
        elif isinstance(ev, Checkpoint):
            if not self.quiet:
                self.write(f"checkpoint at step {ev.step}: {ev.path}")

    def write(self, text: str) -> None:
        self._tqdm.write(text, file=sys.stderr)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()


def run_job(job: Job, view: TqdmView) -> Done:
    """Run a job in the foreground; the first Ctrl-C, or a SIGTERM / SIGUSR1, asks it to stop cleanly (as the app's
    Stop does), a second Ctrl-C kills."""
    from engine.runtime.stop_signals import stopping_on_signals

    requests = Requests()
    # Under a launcher every process gets the signal; one of them says so.
    say = view.write if os.environ.get("RANK", "0") == "0" else (lambda text: None)
    try:
        with stopping_on_signals(requests, say):
            return execute(job, view, requests)
    finally:
        view.close()


def _add_processes(p: argparse.ArgumentParser) -> None:
    """--num-processes, shared by train and sample."""
    p.add_argument("--num-processes", dest="num_processes", type=_option("launch", "num_processes"), default=None,
                   metavar="N", help="run as N processes on this machine's GPUs (one each), or with --device cpu on "
                                     "its CPU, under accelerate launch")


def _without_processes(argv: Sequence[str]) -> list[str]:
    """The command line less its --num-processes N (as argparse took it: whole, abbreviated, or with =N)."""
    out: list[str] = []
    words = iter(argv)
    for word in words:
        name = word.split("=", 1)[0]
        if len(name) > len("--num-") and "--num-processes".startswith(name):
            if "=" not in word:
                next(words, None)
        else:
            out.append(word)
    return out


def _check_before_launch(args: argparse.Namespace) -> None:
    """What one process refuses in a moment (a missing file, a bad setting, a folder that is no run) is refused
    here, before N processes spend their start-up (about 25 s on a CPU) to say it N times."""
    from engine.training.run_dir import RunDir, resolve_checkpoint

    if args.command == "train":
        if args.resume:
            RunDir(args.out).resume_checkpoint()
            return
        from engine.config import FINE_TUNE_PRESET, resolve

        resolve(args.preset or (FINE_TUNE_PRESET if args.from_pretrained else None), args.config,
                _fine_tune_overrides(args))
        if not Path(args.data).exists():
            raise InputError(args.data, "does not exist")
    elif args.command == "sample" and args.run is not None:
        resolve_checkpoint(args.run)


def _launch(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """`medsynth train|sample ... --num-processes N`: the same command as N processes under Accelerate's launcher.
    A stop (Ctrl-C, SIGTERM, SIGUSR1) is passed to the launcher, which passes it to every process; each saves
    as a single process does."""
    import subprocess

    from engine.runtime import launch
    from engine.runtime.stop_signals import STOP_SIGNALS, STOPPED_LAUNCHER_CODES

    device = getattr(args, "device", None) or "auto"
    gpus = launch.local_gpus() if device != "cpu" else 0
    launch.check_processes(args.num_processes, device, gpus)
    _check_before_launch(args)
    cpu = launch.on_cpu(device, gpus)
    cmd = launch.launch_command(args.num_processes, _without_processes(argv), cpu=cpu)
    print(f"starting {args.num_processes} processes on {'the CPU' if cpu else f'{args.num_processes} of {gpus} GPUs'} "
          "(accelerate launch)", file=sys.stderr, flush=True)
    # Its own session: a Ctrl-C reaches the launcher once, from here, not also from the terminal (a second
    # SIGINT to a process aborts it without saving).
    proc = subprocess.Popen(cmd, env=launch.launch_environment(cpu), start_new_session=True, stderr=subprocess.PIPE)

    def forward(signum: int, frame: Any) -> None:
        proc.send_signal(signal.SIGINT if signum == signal.SIGINT else signal.SIGTERM)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, *STOP_SIGNALS)}
    shown = launch.LauncherOutput()
    decode = codecs.getincrementaldecoder("utf-8")(errors="replace")
    try:
        while chunk := proc.stderr.read1(1 << 16):
            sys.stderr.write(shown.feed(decode.decode(chunk)))
            sys.stderr.flush()
        rc = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    rest, rc = shown.finish(rc)
    sys.stderr.write(rest)
    # The launcher ends with 128 + the signal it passed on to the processes, which stopped and saved.
    return EXIT_CANCELLED if rc in STOPPED_LAUNCHER_CODES else rc


def exit_code(done: Done) -> int:
    return EXIT_CANCELLED if done.cancelled else 0


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    from engine.settings import OVERRIDES, overrides

    return overrides(**{name: getattr(args, name, None) for name in OVERRIDES})


def _typed(spec: Any) -> Any:
    """An argparse `type=` from a declared Spec (engine.settings): a value of the wrong type or out of range is
    argparse's one error line naming the flag."""

    def parse(text: str) -> Any:
        try:
            return spec.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def _setting(name: str, one: bool = False) -> Any:
    """`type=` for the flag that overrides a config setting (engine.settings.OVERRIDES); `one`: for each word of
    a flag taking several (--spacing X Y Z)."""
    import dataclasses

    from engine.config import spec
    from engine.settings import OVERRIDES

    found = spec(*OVERRIDES[name])
    return _typed(dataclasses.replace(found, many=False, counts=None) if one else found)


def _option(command: str, name: str) -> Any:
    """`type=` for a command's own option (engine.settings.OPTIONS)."""
    from engine.settings import OPTIONS

    return _typed(OPTIONS[command, name])


def _fine_tune_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The overrides, with a pretrained model's own image size unless --size says otherwise."""
    values = _overrides(args)
    if args.full:
        values["pretrained"]["lora_rank"] = 0
    if args.from_pretrained and args.size is None:
        from engine.config import PretrainedConfig
        from engine.models.stable_diffusion import native_size

        found = PretrainedConfig(path=str(args.from_pretrained), config_folder=str(args.pretrained_config or ""),
                                 trust_pickle=bool(args.trust_pickle))
        values["model"]["image_size"] = native_size(found)
    return values


def cmd_train(args: argparse.Namespace) -> int:
    from engine.config import FINE_TUNE_PRESET, resolve
    from engine.training.jobs import train_job

    if args.resume:
        job = train_job(None, args.out, resume=True, steps=args.steps)
    else:
        from engine.io.load import load_images, volume_options

        cfg = resolve(args.preset or (FINE_TUNE_PRESET if args.from_pretrained else None), args.config,
                      _fine_tune_overrides(args))
        data = load_images(args.data, split=cfg.data.split, volumes=volume_options(cfg))
        job = train_job(cfg, args.out, data=data)
    done = run_job(job, TqdmView())
    r = done.result
    if r and r.get("main_process", True):
        print(f"trained to step {r['step']} (loss {r['loss']:.4f}) in {r['seconds']:.0f} s; "
              f"checkpoint {r['checkpoint']}")
        if r.get("peak_gpu_gib") is not None:
            print(f"peak GPU memory {r['peak_gpu_gib']:.2f} GiB")
    if done.cancelled and r.get("main_process", True):
        print(f"stopped; continue with: medsynth train --resume --out {args.out}")
    return exit_code(done)


def _sample_count(args: argparse.Namespace) -> int:
    """--n, or with a prompts file the samples it asks for."""
    from engine.errors import InputError

    if args.prompts is None:
        if args.n is None:
            raise InputError(None, "say how many samples to generate (--n)")
        return args.n
    from engine.io.prompts_csv import read_prompt_rows

    total = sum(row.n for row in read_prompt_rows(args.prompts))
    if args.n is not None and args.n != total:
        raise InputError(args.prompts, f"asks for {total} samples; leave out --n or make it {total}")
    return total


def cmd_sample(args: argparse.Namespace) -> int:
    from engine.runtime.ranks import launched_rank

    try:
        return _sample(args)
    except InputError:
        if launched_rank() != 0:
            return EXIT_INPUT  # every process refuses alike; the main one says it, once
        raise


def _sample(args: argparse.Namespace) -> int:
    from engine.config import PretrainedConfig
    from engine.inference.sample import SampleJob

    if (args.run is None) == (args.from_pretrained is None):
        raise InputError(None, "give a run folder or checkpoint to sample, or --from-pretrained PATH (one of them)")
    pretrained = None if args.from_pretrained is None else PretrainedConfig(
        path=args.from_pretrained, config_folder=args.pretrained_config or "", trust_pickle=args.trust_pickle)
    job = SampleJob(args.run, _sample_count(args), args.out, sampler_name=args.sampler, steps=args.steps,
                    seed=args.seed, class_index=args.class_index, class_mix=args.class_mix, guidance=args.guidance,
                    batch=args.batch, device=args.device, overwrite=args.force,
                    redraw_mismatches=not args.keep_mismatched,
                    prompts=None if args.prompt is None else [args.prompt], prompts_file=args.prompts,
                    negative_prompt=args.negative_prompt, pretrained=pretrained, resume=args.resume)
    done = run_job(job, TqdmView())
    r = done.result
    if not r.get("main_process", True):
        return exit_code(done)  # the main process reports for all
    if r.get("shards") or "in_file" in r:  # several processes, stopped
        drawn = "the samples drawn" if r.get("n") is None else f"{r['n']} of {job.n} samples drawn"
        where = f"kept in {r['shards']}" if r.get("shards") else f"in {r['out']}"
        first = f"; the first {r['in_file']} are in {r['out']}" if r.get("shards") and r.get("in_file") else ""
        print(f"stopped with {drawn} {where}{first}; continue with the same command and --resume")
    else:
        print(f"wrote {r.get('n', 0)} samples to {r.get('out')} in {r.get('seconds', 0):.1f} s")
    return exit_code(done)


def cmd_info(args: argparse.Namespace) -> int:
    from engine.info import describe

    print(describe(args.file))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from engine.export import export

    bars: list = []

    def progress(done: int, total: int) -> None:
        # Created on first progress so that a refused export prints only its error line.
        if not bars:
            bars.append(tqdm(desc="export", unit="sample", total=total))
        bars[0].update(done - bars[0].n)

    try:
        r = export(args.file, args.to, args.format, progress, max_corr=args.max_corr, train_data=args.train_data,
                   dataset_id=args.dataset_id, dataset_name=args.dataset_name)
    finally:
        for bar in bars:
            bar.close()  # also before an error, which then starts its own line
    left = f"; left out {r['left_out']} too close to a training image" if args.max_corr is not None else ""
    print(f"exported {r['n']} samples as {r['format']} to {r['out']}{left}")
    if args.format == "nnunet":
        print(f"provenance (file, seed, class per case): {r['samples_csv']}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from engine.evaluation.evaluate import EvalSettings, EvaluateJob
    from engine.evaluation.sharding import main_process

    settings = EvalSettings(fid_weights=args.fid_weights, features_net=args.features_net,
                            max_samples=args.max_samples, nn_threshold=args.threshold,
                            utility=not args.no_utility, utility_steps=args.utility_steps, seed=args.seed,
                            device=args.device)
    settings.trust_code = args.trust_code
    try:
        done = run_job(EvaluateJob(args.file, args.real, args.train_data, settings), TqdmView())
    except InputError:
        if main_process():
            raise
        return EXIT_INPUT  # under a launcher every process finds the fault; the main one says it, once
    r = done.result
    if not r.get("main_process", True):
        return exit_code(done)  # the other processes of a launch: the main one prints the run's figures
    from engine.evaluation.figures import named_figures, unmeasured_groups

    # Named as in the app and the report, each beside its real-vs-real reference, with the key in /metrics.
    for key, name, value, ref, reading in named_figures(r.get("figures") or {}):
        reference = f"  (real vs real {ref:.4g})" if ref is not None else ""
        print(f"  {name}: {value:.4g}{reference}{'  — ' + reading if reading else ''}  [{key}]")
    for why, unmeasured in unmeasured_groups(r.get("summary") or {}):
        print(f"  not measured — {why}:")
        for key, name in unmeasured:
            print(f"    {name}  [{key}]")
    if r.get("report"):
        print(f"report: {r['report']}")
    print(f"figures written to {args.file} /metrics in {r.get('seconds', 0):.0f} s"
          + ("" if r.get("complete", True) else " (stopped early: partial)"))
    return exit_code(done)


def cmd_reader_study(args: argparse.Namespace) -> int:
    from engine.evaluation import reader_study as rs
    from engine.evaluation import reader_summary

    if args.action == "create":
        if not (args.real and args.synth and args.out):
            raise InputError(None, "reader-study create needs REAL SYNTH --out FOLDER")
        made = rs.create_study(args.real, args.synth, args.out, args.n_real, args.n_synth, args.seed, key=args.key)
        print(f"study with {args.n_real} real and {args.n_synth} synthetic items, blinded and shuffled: {made.folder}")
        print("readers open that folder in the app (Reader study tab); give them nothing else")
        print(f"answer key: {made.key}")
        print("keep the answer key yourself and do not give it to readers; `reader-study summary` needs it")
        return 0
    summary = reader_summary.summarise(args.real, key=args.key)

    def show(header: list[str], rows: list[list[str]]) -> None:
        widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
        for line in [header, *rows]:
            print("  ".join(str(c).ljust(w) for c, w in zip(line, widths)))

    show(list(reader_summary.FIGURE_COLUMNS), reader_summary.figure_rows(summary))
    agreement = reader_summary.agreement_rows(summary)
    if agreement:
        print()
        show(["agreement", "readers", "items", "kappa"], agreement)
    print(f"\n{summary['convention']}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from engine.demo import run_demo

    return run_demo(Path(args.out), steps=args.steps, n=args.n, run=lambda job: exit_code(run_job(job, TqdmView())))


class VersionAction(argparse.Action):
    """--version: the build's facts are worked out only when asked for (git, torch's version file), not for
    every parse."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: object) -> None:
        super().__init__(option_strings, dest=dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        from engine.build_info import version_text

        print(version_text())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medsynth", description="Train diffusion models on medical images and "
                                "generate synthetic, labeled data.")
    p.add_argument("--version", action=VersionAction, help="show the version, the torch build and the git commit")
    sub = p.add_subparsers(dest="command", required=True)
    # One function per subcommand, in the order --help lists them.
    for add in (_add_demo, _add_train, _add_sample, _add_info, _add_export, _add_evaluate, _add_reader_study):
        add(sub)
    return p


def _add_demo(sub: Subcommands) -> None:
    d = sub.add_parser("demo", help="phantoms -> short training -> generation -> summary (headless)")
    d.add_argument("--out", default="medsynth-demo", help="folder for the demo's files")
    d.add_argument("--steps", type=_option("demo", "steps"), default=None,
                   help="training steps (default: the demo preset's)")
    d.add_argument("--n", type=_option("demo", "n"), default=64, help="samples to generate")
    d.set_defaults(func=cmd_demo)


def _add_train(sub: Subcommands) -> None:
    from engine.config import preset_names
    from engine.settings import Device, LossKind, MaskMode, Objective

    t = sub.add_parser("train", help="train a diffusion model on DATA")
    t.add_argument("data", nargs="?", help="npz, NIfTI, MedSynth .h5, or a folder (images/+masks/, MSD)")
    t.add_argument("--out", required=True, help="run directory (config, checkpoints, loss log)")
    t.add_argument("--preset", default=None, help=f"one of {', '.join(preset_names())} (default: demo)")
    t.add_argument("--config", default=None, help="TOML file with [model] [train] [data] settings")
    t.add_argument("--steps", type=_setting("steps"))
    t.add_argument("--batch", type=_setting("batch"))
    t.add_argument("--lr", type=_setting("lr"))
    t.add_argument("--loss", choices=LossKind.values())
    # --prediction: its name before flow matching joined the two prediction targets.
    t.add_argument("--objective", "--prediction", dest="objective", choices=Objective.values(),
                   help="what the network learns: epsilon or v_prediction (DDPM samplers), or flow (Euler / Heun)")
    t.add_argument("--mask-mode", dest="mask_mode", choices=MaskMode.values())
    t.add_argument("--seed", type=_setting("seed"))
    t.add_argument("--size", type=_setting("size"),
                   help="training size in pixels / voxels per axis (default: the preset's)")
    t.add_argument("--spacing", type=_setting("spacing", one=True), nargs=3, metavar=("X", "Y", "Z"),
                   help="voxel spacing in mm for volumes (default: the finest at which every case fits)")
    t.add_argument("--autoencoder-steps", dest="autoencoder_steps", type=_setting("autoencoder_steps"),
                   help="stage-1 steps of a latent preset (brain-128, ct-128, cxr-256, cxr-512)")
    # Flags default to None, not False: an absent flag keeps the preset's value.
    t.add_argument("--gradient-checkpointing", dest="gradient_checkpointing", action="store_true", default=None,
                   help="recompute activations in the backward pass: less memory, about a third slower")
    t.add_argument("--memory-limit", dest="memory_limit", type=_setting("memory_limit"), metavar="GIB",
                   help="refuse a run whose estimated memory exceeds this (default: the device's)")
    t.add_argument("--device", choices=Device.values())
    t.add_argument("--record-full-path", dest="record_full_path", action="store_true", default=None,
                   help="write DATA's full path into checkpoints and samples (default: its base name and a hash)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    _add_processes(t)
    f = t.add_argument_group("fine-tuning a Stable Diffusion model with text prompts")
    f.add_argument("--from-pretrained", dest="from_pretrained", metavar="PATH",
                   help="a diffusers folder or a .safetensors / .ckpt Stable Diffusion checkpoint on disk")
    f.add_argument("--pretrained-config", dest="pretrained_config", metavar="DIR",
                   help="for a single file: the diffusers folder of its architecture (tokenizer and configs)")
    f.add_argument("--lora", type=_setting("lora"), metavar="RANK", help="LoRA rank (default 8)")
    f.add_argument("--full", action="store_true", help="fine-tune the whole UNet instead of LoRA adapters")
    f.add_argument("--train-text-encoder", dest="train_text_encoder", action="store_true", default=None,
                   help="train the text encoder too (frozen by default)")
    f.add_argument("--prompt-template", dest="prompt_template", metavar="TEXT",
                   help='how a class becomes a prompt, e.g. "chest x-ray, {class}" (default "{class}")')
    f.add_argument("--prompt", metavar="TEXT", help="one prompt for every image (when the data names none)")
    f.add_argument("--trust-pickle", dest="trust_pickle", action="store_true", default=None,
                   help="load a pickle .ckpt, which can run code: only for a file from a source you trust")
    t.set_defaults(func=cmd_train)


def _add_sample(sub: Subcommands) -> None:
    from engine.settings import Device, Sampler

    s = sub.add_parser("sample", help="generate samples from a trained run into an HDF5 file")
    s.add_argument("run", nargs="?", help="run directory or checkpoint folder")
    s.add_argument("--n", type=_option("sample", "n"), default=None,
                   help="how many samples (with --prompts: the file's count unless given); under torchrun, whose "
                        "own parser takes --n for one of its options, write --num-samples")
    s.add_argument("--num-samples", dest="n", type=_option("sample", "n"), default=None, help=argparse.SUPPRESS)
    s.add_argument("--out", required=True, help="output .h5 file")
    s.add_argument("--sampler", default=None, choices=Sampler.values(),
                   help="dpm, ddim or ddpm for an epsilon / v model (default dpm); euler or heun for a flow model "
                        "(default euler)")
    s.add_argument("--steps", type=_option("sample", "steps"), default=None,
                   help="sampler steps (default: the sampler's own, e.g. dpm 25, euler 10, ddpm 1000)")
    s.add_argument("--seed", type=_option("sample", "seed"), default=0, help="sample i gets seed SEED+i")
    s.add_argument("--class", dest="class_index", type=_option("sample", "class"), default=None,
                   help="generate only this class")
    s.add_argument("--class-mix", default=None, help='weights per class, e.g. "0:0.5,3:0.5"')
    s.add_argument("--guidance", type=_option("sample", "guidance"), default=2.0,
                   help="classifier-free guidance scale for class- or text-conditional models (1 = none)")
    s.add_argument("--prompt", default=None, metavar="TEXT",
                   help='what to generate, for a model fine-tuned from text: e.g. "chest x-ray, pneumonia"')
    s.add_argument("--prompts", default=None, metavar="FILE.csv",
                   help="a CSV with a prompt column (and optional n and class columns): one run, many prompts")
    s.add_argument("--negative-prompt", dest="negative_prompt", default="", metavar="TEXT",
                   help="what guidance steers away from (default: nothing)")
    s.add_argument("--from-pretrained", dest="from_pretrained", default=None, metavar="PATH",
                   help="sample a Stable Diffusion folder or file as it is, without a run")
    s.add_argument("--pretrained-config", dest="pretrained_config", default=None, metavar="DIR",
                   help="for a single file: the diffusers folder of its architecture")
    s.add_argument("--trust-pickle", dest="trust_pickle", action="store_true",
                   help="load a pickle .ckpt, which can run code: only for a file from a source you trust")
    s.add_argument("--batch", type=_option("sample", "batch"), default=32)
    s.add_argument("--device", default=Device.AUTO.value, choices=Device.values())
    s.add_argument("--force", action="store_true", help="overwrite an existing output file")
    s.add_argument("--resume", action="store_true",
                   help="continue an interrupted run into the same --out with the same --n and settings, on any "
                        "number of processes: only the missing samples are drawn")
    s.add_argument("--keep-mismatched", action="store_true",
                   help="keep samples whose mask contradicts a counting class (\"1 lesion\") instead of drawing "
                        "them again")
    _add_processes(s)
    s.set_defaults(func=cmd_sample)


def _add_info(sub: Subcommands) -> None:
    i = sub.add_parser("info", help="what an HDF5 / NIfTI / npz file or run directory holds")
    i.add_argument("file")
    i.set_defaults(func=cmd_info)


def _add_export(sub: Subcommands) -> None:
    from engine.settings import ExportFormat

    e = sub.add_parser("export", help="export a MedSynth HDF5 file")
    e.add_argument("file")
    e.add_argument("--to", required=True, help="output folder (new or empty); for nnunet the nnUNet_raw folder, in "
                   "which DatasetNNN_Name is made (or a DatasetNNN_Name folder itself)")
    # No argparse choices: the export checks the name, so a wrong one is one error line naming the file.
    e.add_argument("--format", required=True, metavar=f"{{{','.join(ExportFormat.values())}}}",
                   help="png: 2D images + masks; nifti: .nii.gz + _seg.nii.gz per sample, affine kept; "
                   "nnunet: DatasetNNN_Name/ with imagesTr/ labelsTr/ dataset.json (nnU-Net v2 raw)")
    e.add_argument("--dataset-id", dest="dataset_id", type=int, default=None, metavar="N",
                   help="nnunet: the dataset id (default: the next free one from 501)")
    e.add_argument("--dataset-name", dest="dataset_name", default=None, metavar="NAME",
                   help="nnunet: the dataset name (default: MedSynth)")
    e.add_argument("--max-corr", dest="max_corr", type=_option("export", "max_corr"), default=None, metavar="T",
                   help="leave out samples whose nearest training image correlates above T (e.g. 0.95)")
    e.add_argument("--train-data", dest="train_data", default=None,
                   help="training data to compute those correlations against (default: what evaluate stored)")
    e.set_defaults(func=cmd_export)


def _add_evaluate(sub: Subcommands) -> None:
    from engine.settings import Device

    v = sub.add_parser("evaluate", help="is the synthetic data like the real data, diverse, free of copies, useful?")
    v.add_argument("file", help="MedSynth .h5 file of synthetic samples")
    v.add_argument("--real", default=None, help="held-out real data (any input medsynth train reads)")
    v.add_argument("--train-data", dest="train_data", default=None,
                   help="the generator's training data (default: the path recorded in the file)")
    v.add_argument("--fid-weights", dest="fid_weights", default=None,
                   help="pt_inception-2015-12-05-6726825d.pth (default: $MEDSYNTH_FID_WEIGHTS or the torch hub cache)")
    v.add_argument("--features-net", dest="features_net", default=None, metavar="FILE",
                   help="exported (.pt2) or TorchScript network mapping images or volumes to features, for a "
                        "Fréchet distance on them (e.g. a 3D encoder)")
    v.add_argument("--trust-code", dest="trust_code", action="store_true",
                   help="load the --features-net FILE as torch loads it, running any code it holds (TorchScript, "
                        "pickled parts). Without it only a plain torch.export .pt2 that runs no code is loaded. "
                        "Give it only for a file whose source you trust")
    v.add_argument("--max-samples", dest="max_samples", type=_option("evaluate", "max_samples"), default=1000,
                   help="samples per set for the distribution distances")
    v.add_argument("--threshold", type=_option("evaluate", "threshold"), default=None,
                   help="correlation above which a sample counts as a copy (default: the larger of 0.95 and the "
                        "99th percentile of held-out real cases' own nearest-training correlations)")
    v.add_argument("--utility-steps", dest="utility_steps", type=_option("evaluate", "utility_steps"), default=300,
                   help="training steps for each downstream segmenter / classifier")
    v.add_argument("--no-utility", dest="no_utility", action="store_true", help="skip the downstream training")
    v.add_argument("--seed", type=_option("evaluate", "seed"), default=0)
    v.add_argument("--device", default=Device.AUTO.value, choices=Device.values())
    v.set_defaults(func=cmd_evaluate)


def _add_reader_study(sub: Subcommands) -> None:
    rsp = sub.add_parser("reader-study", help="blinded real / fake / unsure study for radiologists, and its summary",
                         description="create REAL.h5 SYNTH.h5 --out FOLDER: a blinded, shuffled study for readers "
                                     "and, outside it, its answer key; summary FOLDER: accuracy, sensitivity, "
                                     "specificity and kappas per reader (needs the key)")
    rsp.add_argument("action", choices=["create", "summary"])
    rsp.add_argument("real", help="create: real MedSynth .h5 file; summary: the study folder")
    rsp.add_argument("synth", nargs="?", help="create: synthetic MedSynth .h5 file")
    rsp.add_argument("--out", help="create: new study folder")
    rsp.add_argument("--n-real", dest="n_real", type=_option("reader-study", "n_real"), default=20)
    rsp.add_argument("--n-synth", dest="n_synth", type=_option("reader-study", "n_synth"), default=20)
    rsp.add_argument("--seed", type=_option("reader-study", "seed"), default=0)
    rsp.add_argument("--key", help="the answer key file, kept outside the study folder "
                                   "(default: FOLDER.key.json beside the folder)")
    rsp.set_defaults(func=cmd_reader_study)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "train" and not args.resume and not args.data:
        parser.error("train needs DATA (or --resume)")
    try:
        if getattr(args, "num_processes", None) not in (None, 1):
            return _launch(args, sys.argv[1:] if argv is None else argv)
        return int(args.func(args) or 0)
    except InputError as exc:
        print(f"medsynth: error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    except OSError as exc:  # a full disk, a read-only file system, a permission: one line, like bad input
        if (fault := os_error(exc.filename or "output", exc)) is None:
            raise
        print(f"medsynth: error: {fault}", file=sys.stderr)
        return EXIT_INPUT
    except KeyboardInterrupt:
        print("medsynth: aborted", file=sys.stderr)
        return EXIT_CANCELLED


if __name__ == "__main__":
    sys.exit(main())
