"""recsvc train, import, eval, tune and models: the offline commands."""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
from pathlib import Path
from typing import Any

from recsvc.cli.common import (
    PROTOCOLS,
    DefaultsHelpFormatter,
    common_options,
    namespace_option,
    settings_from,
)
from recsvc.cli.images import add_image_eval_options, run_image_eval
from recsvc.cli.models_commands import (
    add_models_history,
    add_models_promote,
    add_models_sync,
    add_who_and_why,
    promote,
)
from recsvc.config import Settings
from recsvc.errors import ConfigError

log = logging.getLogger("recsvc")


def add_train(commands: Any) -> None:
    p = commands.add_parser(
        "train",
        formatter_class=DefaultsHelpFormatter,
        help="train a model from an interactions file and publish it",
        description="Read interactions (CSV, TSV, Parquet or MovieLens u.data: user, item, "
        "optional weight and timestamp), fit implicit ALS (GPU when available; Spark ALS with "
        "--engine spark), build the HNSW "
        "indexes and publish a new, checksummed model version to the model store.",
    )
    p.add_argument("--out", type=Path, help="model store directory (default: RECSVC_MODEL_STORE)")
    p.add_argument(
        "--items",
        type=Path,
        help="optional catalogue: item id and category columns (default: none)",
    )
    p.add_argument(
        "--images",
        type=Path,
        help="embedding table from `recsvc embed`: adds the visual index, the cold-start "
        "projection and the items that have an image but no interaction (default: none)",
    )
    p.add_argument(
        "--evaluate",
        choices=PROTOCOLS,
        help="also measure these parameters on this protocol's holdout; metrics go into the "
        "model (default: not measured)",
    )
    _add_data_options(p)
    _add_model_options(p)
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    namespace_option(p)
    common_options(p)
    p.set_defaults(run=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    from recsvc.artifacts import ModelStore
    from recsvc.training.pipeline import train_from_files

    settings = settings_from(args, model_store=args.out, train=_train_overrides(args))
    model = train_from_files(
        _interactions_path(args),
        ModelStore.from_settings(settings),
        settings.train,
        settings.index,
        items_path=args.items,
        progress=not args.no_progress,
        read_options=_read_options(args),
        evaluate=args.evaluate,
        images_path=args.images,
    )
    print(
        json.dumps(
            {
                "model_version": model.version,
                "model_store": str(settings.model_store),
                "users": model.info.num_users,
                "items": model.info.num_items,
                "interactions": model.info.num_interactions,
                "engine": model.info.engine,
                "trained_on": model.info.trained_on,
                "index_recall_at_10": round(model.info.index_recall_at_10, 4),
                "similar_index_recall_at_10": (
                    round(model.info.similar_index.recall_at_10, 4)
                    if model.info.similar_index
                    else None
                ),
            }
        )
    )
    return 0


def add_import(commands: Any) -> None:
    p = commands.add_parser(
        "import",
        formatter_class=DefaultsHelpFormatter,
        help="load history files into the interaction store that the train worker trains on",
        description="Read interaction files with the readers and column options of `recsvc "
        "train` and append them to the Parquet interaction store, the one source of training "
        "data of `recsvc worker train`. Idempotent: a file whose content was imported before "
        "adds nothing; a file changed since (rows appended) is a new file and is imported whole, "
        "so add new history as new files (e.g. one a day). Resumable: an interrupted import "
        "continues at the first part not yet written. A directory stands for the interaction "
        "files in it. Prints one JSON line per file.",
    )
    p.add_argument(
        "--interaction-store",
        type=Path,
        help="interaction store directory (default: RECSVC_WORKERS__INTERACTION_STORE)",
    )
    _add_data_options(p, many=True)
    namespace_option(p)
    common_options(p)
    p.set_defaults(run=_run_import)


def _run_import(args: argparse.Namespace) -> int:
    from recsvc.data.interaction_files import read_interactions
    from recsvc.data.interaction_store import (
        InteractionStore,
        file_sha256,
        import_interactions,
    )

    settings = settings_from(args)
    store = InteractionStore(args.interaction_store or settings.workers.interaction_store)
    options = _read_options(args)
    for path in _history_files(args.interactions):
        result = import_interactions(
            store,
            path,
            functools.partial(read_interactions, path, options),
            file_sha256(path),
            chunk_rows=settings.workers.import_part_rows,
            on_chunk=functools.partial(_log_import_progress, path),
        )
        print(json.dumps(result.as_dict()), flush=True)
    return 0


def _history_files(paths: list[Path]) -> list[Path]:
    """The files named, a directory standing for the interaction files in it (by name, in
    name order; other files, such as a README, are left alone)."""
    from recsvc.data.interaction_files import detect_format
    from recsvc.errors import DataError

    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            for candidate in sorted(p for p in path.iterdir() if p.is_file()):
                try:
                    detect_format(candidate)
                except DataError:
                    continue
                files.append(candidate)
        elif path.is_file():
            files.append(path)
        else:
            raise ConfigError(f"--interactions: {path}: no such file or directory")
    return files


def _log_import_progress(path: Path, done: int, total: int) -> None:
    log.info("%s: part %d of %d written", path, done, total)


def add_eval(commands: Any) -> None:
    p = commands.add_parser(
        "eval",
        formatter_class=DefaultsHelpFormatter,
        help="evaluate a model offline against baselines",
        description="Split the interactions by a protocol, fit the model on the training part and "
        "report ranking metrics at k on the test part, with popularity, random and (for ALS) BPR "
        "baselines computed in the same run. MAP@k = (sum of precision@r at each hit rank r) / "
        "min(k, relevant items), averaged over users with test items.",
    )
    _add_split_options(p)
    _add_data_options(p)
    _add_model_options(p)
    p.add_argument("--no-baselines", action="store_true", help="measure the model only")
    p.add_argument("--json", action="store_true", help="print one JSON object (default: a table)")
    _add_bias_options(p)
    _add_interest_options(p)
    add_image_eval_options(p)
    common_options(p)
    p.set_defaults(run=_run_eval)


def _add_bias_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("exposure and popularity bias (docs/bias.md)")
    g.add_argument(
        "--popularity-discount",
        type=_discounts,
        metavar="D[,D...]",
        help="also measure the model at these popularity discounts (0..1, comma-separated): "
        "the accuracy / exposure trade-off curve (default: none; with --plot: "
        f"{','.join(str(d) for d in DEFAULT_CURVE)})",
    )
    g.add_argument(
        "--plot",
        type=Path,
        metavar="FILE",
        help="write the trade-off curve as a PNG (needs matplotlib: pip install "
        "'recsvc[plot]'; default: none)",
    )
    g.add_argument(
        "--item-categories",
        type=Path,
        metavar="FILE",
        help="items' categories for the per-category exposure: a MovieLens u.item (genres) or "
        "a catalogue with item id and category columns (default: the u.item beside a u.data "
        "--interactions file, else none)",
    )


DEFAULT_CURVE = (0.0, 0.25, 0.5, 0.75, 1.0)


def _discounts(text: str) -> tuple[float, ...]:
    """--popularity-discount: comma-separated values in [0, 1]."""
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None
    bad = [v for v in values if not 0.0 <= v <= 1.0]  # also rejects NaN
    if not values or bad:
        raise argparse.ArgumentTypeError(f"each value must be in [0, 1], got {text!r}")
    return values


def _add_interest_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("users with several tastes (docs/interests.md)")
    g.add_argument(
        "--interests",
        type=int,
        nargs="+",
        metavar="M",
        help="instead of the baselines: the lists of up to M interest vectors per user, for "
        "each M given (1: the single vector), with intra-list diversity and, when categories are "
        "known (--item-categories), category coverage (default: not measured)",
    )
    g.add_argument(
        "--interest-vector",
        choices=["fold-in", "mean"],
        default="fold-in",
        help="an interest's vector: the fold-in of its items (what serving does) or their mean "
        "item factor",
    )


def _load_split(args: argparse.Namespace) -> tuple[Settings, Any, Any, int]:
    """eval and tune: settings, the interactions, their split by the protocol, and its seed."""
    from recsvc.data.interaction_files import read_interactions
    from recsvc.evaluation.holdout import split_interactions

    settings = settings_from(args, train=_train_overrides(args))
    data = read_interactions(_interactions_path(args), _read_options(args))
    seed = 42 if args.seed is None else int(args.seed)
    split = split_interactions(
        data.matrix, data.timestamps, args.protocol, args.ratio, seed, args.last_n
    )
    return settings, data, split, seed


def _run_eval(args: argparse.Namespace) -> int:
    from recsvc.evaluation.holdout import evaluate_model, evaluate_with_baselines, not_evaluated
    from recsvc.training.pipeline import train_parameters

    if args.images is not None:
        settings = settings_from(args, train=_train_overrides(args))
        print(json.dumps(run_image_eval(args, settings)))
        return 0
    settings, data, split, seed = _load_split(args)
    categories = _item_categories(args, data.item_ids)
    discounts = args.popularity_discount or (DEFAULT_CURVE if args.plot else ())
    if args.plot:
        from recsvc.evaluation.tradeoff_plot import require_matplotlib

        require_matplotlib()  # before the fit: fail fast
    if args.interests:
        return _run_interest_eval(args, settings, data, split, categories)
    if args.no_baselines:
        model = evaluate_model(split, settings.train, args.k, False, categories, discounts)
        result: dict[str, Any] = {"model": model}
    else:
        result = evaluate_with_baselines(
            split, settings.train, args.k, seed, categories=categories, discounts=discounts
        )
    summary = {
        **{k: v for k, v in result["model"].items() if "@" in k},
        "protocol": args.protocol,
        "k": args.k,
        "seed": seed,
        "data": data.statistics(),
        "split": {"train": int(split.train.nnz), "test": int(split.test.nnz)},
        "not_evaluated": not_evaluated(split, args.protocol, args.ratio, args.last_n),
        "params": train_parameters(settings.train),
        **result,
    }
    if args.plot:
        from recsvc.evaluation.tradeoff_plot import plot_tradeoff

        plot_tradeoff(result["model"]["popularity_discount"], args.k, args.plot)
        summary["plot"] = str(args.plot)
    if args.json:
        print(json.dumps(summary))
    else:
        _print_metrics_table(summary, args.k)
        _print_exposure(summary, args.k)
    return 0


def _item_categories(args: argparse.Namespace, item_ids: list[str]) -> list[tuple[str, ...]] | None:
    """Each item's categories (in the interactions' item order), for the per-category
    exposure; None when none are known."""
    from recsvc.catalogue.reader import read_categories
    from recsvc.data.movielens_items import is_movielens_items, read_genres

    path = args.item_categories
    if path is None:
        beside = _interactions_path(args).with_name("u.item")
        if _interactions_path(args).name != "u.data" or not beside.is_file():
            return None
        path = beside
    if is_movielens_items(path):
        by_item: dict[str, tuple[str, ...]] = read_genres(path)
    else:
        by_item = {item: (name,) for item, name in read_categories(path).items() if name}
    return [by_item.get(item, ()) for item in item_ids]


def _run_interest_eval(
    args: argparse.Namespace,
    settings: Settings,
    data: Any,
    split: Any,
    categories: list[tuple[str, ...]] | None,
) -> int:
    from recsvc.core.queries import MAX_INTERESTS
    from recsvc.evaluation.interests import category_matrix, evaluate_interests

    if any(not 1 <= m <= MAX_INTERESTS for m in args.interests):
        raise ConfigError(f"--interests: each M must be in [1, {MAX_INTERESTS}]")
    genres = category_matrix(categories) if categories is not None else None
    result = evaluate_interests(
        split, settings.train, args.k, args.interests, genres, args.interest_vector
    )
    result = {"protocol": args.protocol, "data": data.statistics(), **result}
    if args.json:
        print(json.dumps(result))
        return 0
    names = ["ndcg", "precision", "recall", "coverage", "intra_list_diversity"]
    if genres is not None:
        names += ["genres_per_list", "genre_coverage"]
    k = args.k
    print(f"protocol {args.protocol}, k={k}, interest vector {args.interest_vector}")
    print(f"{'M':>3}" + "".join(f"{n + '@' + str(k):>26}" for n in names) + f"{'users split':>14}")
    for m, metrics in result["interests"].items():
        row = "".join(f"{metrics[f'{n}@{k}']:>26.4f}" for n in names)
        print(f"{m:>3}{row}{metrics['users_split']:>14}")
    return 0


def _print_metrics_table(summary: dict[str, Any], k: int) -> None:
    rows = {"model": summary["model"], **summary.get("baselines", {})}
    names = ["ndcg", "precision", "recall", "map", "hit_rate", "coverage", "mean_popularity"]
    print(f"protocol {summary['protocol']}, k={k}, {summary['data']}")
    print(f"{'':12}" + "".join(f"{n + '@' + str(k):>20}" for n in names))
    for label, metrics in rows.items():
        print(f"{label:12}" + "".join(f"{metrics[f'{n}@{k}']:>20.4f}" for n in names))
    left_out = summary["not_evaluated"]
    users, items = left_out["users"], left_out["items_never_in_test"]
    print(f"users evaluated: {users['of'] - users['count']} of {users['of']}", end="")
    print(f"; {users['count']} not: {users['reason']}" if users["count"] else "")
    if items["count"]:
        print(f"items never in the test part: {items['count']} of {items['of']}: {items['reason']}")
    unseen = left_out["test_items_not_in_training"]
    if unseen["count"]:
        print(
            f"test items never seen in training: {unseen['count']} "
            f"({unseen['test_interactions']} test interactions): {unseen['reason']}"
        )


def _print_exposure(summary: dict[str, Any], k: int) -> None:
    """The exposure metrics of each ranking, the trade-off curve and the model's
    per-category exposure, when measured."""
    rows = {"model": summary["model"], **summary.get("baselines", {})}
    names = ["gini", "long_tail_share", "novelty"]
    print(f"\nexposure at k={k} (long tail: outside the top 20% of items by training popularity)")
    print(f"{'':12}" + "".join(f"{n + '@' + str(k):>20}" for n in names))
    for label, metrics in rows.items():
        print(f"{label:12}" + "".join(f"{metrics[f'{n}@{k}']:>20.4f}" for n in names))
    curve = summary["model"].get("popularity_discount")
    if curve:
        names = ["ndcg", "long_tail_share", "gini", "novelty", "coverage", "mean_popularity"]
        print("\nmodel by popularity discount (the accuracy / exposure trade-off)")
        print(f"{'discount':>10}" + "".join(f"{n + '@' + str(k):>20}" for n in names))
        for point in curve:
            values = "".join(f"{point[f'{n}@{k}']:>20.4f}" for n in names)
            print(f"{point['popularity_discount']:>10.2f}" + values)
    by_category = summary["model"].get(f"category_exposure@{k}")
    if by_category:
        print("\nmodel exposure by category (share of slots vs share of the catalogue)")
        print(f"{'category':20}{'exposure':>12}{'catalogue':>12}{'ratio':>10}")
        for name, shares in by_category.items():
            print(
                f"{name[:20]:20}{shares['exposure']:>12.4f}{shares['catalogue']:>12.4f}"
                f"{shares['ratio']:>10.2f}"
            )
    if "plot" in summary:
        print(f"\ntrade-off plot written to {summary['plot']}")


def add_tune(commands: Any) -> None:
    from recsvc.tuning.space import SPACE_HELP

    p = commands.add_parser(
        "tune",
        formatter_class=DefaultsHelpFormatter,
        help="search hyper-parameters on a validation split (optuna)",
        description="Split by the protocol into train and test; search parameters on validation "
        "splits carved from the training part only; fit the best on the whole training part and "
        "measure it on the test part once. Writes the best parameters to --out (after every "
        "completed trial, then with the test figure), which train and eval accept as --params. "
        "A trial that fails (NaN factors, out of memory) is counted as failed and the search "
        "goes on. Trials are kept in OUT.optuna.log: the same command run again resumes the "
        "search (after a crash or a kill) or extends it (a larger --trials). " + SPACE_HELP,
    )
    _add_split_options(p)
    _add_data_options(p)
    _add_model_options(p, tuning=True)
    p.add_argument(
        "--trials",
        type=int,
        default=120,
        help="trials in all, counting those of an interrupted run of the same search",
    )
    p.add_argument(
        "--timeout",
        type=float,
        help="stop starting trials after this many seconds (default: no limit)",
    )
    p.add_argument(
        "--metric",
        default="ndcg",
        choices=["ndcg", "precision", "recall", "map"],
        help="what the search maximises (at --k)",
    )
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="where to write the parameters (JSON); the trials go to OUT.optuna.log",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object (default: a summary)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    common_options(p)
    p.set_defaults(run=_run_tune)


def _run_tune(args: argparse.Namespace) -> int:
    from recsvc.tuning.search import tune
    from recsvc.tuning.storage import journal_path

    settings, _, split, seed = _load_split(args)
    try:
        result = tune(
            split,
            settings.train,
            args.protocol,
            args.k,
            args.trials,
            seed,
            metric=args.metric,
            timeout=args.timeout,
            last_n=args.last_n,
            pinned=_tune_pins(args, settings.train),
            out=args.out,
            progress=not args.no_progress,
        )
    except KeyboardInterrupt:
        print(
            f"recsvc: interrupted; the finished trials are kept in {journal_path(args.out)} "
            "(the same command resumes them)",
            file=sys.stderr,
        )
        return 130
    if args.json:
        print(json.dumps(result))
    else:
        _print_tune_summary(result, args.out)
    return 0


def _tune_pins(args: argparse.Namespace, train: Any) -> dict[str, Any]:
    """The parameters a tune keeps fixed, with their values: each one given as a flag, and
    those in a --params file that apply (a file from an ALS tune holds no learning rate)."""
    from recsvc.tuning.search import read_params
    from recsvc.tuning.space import SEARCHED, applies

    flags = {name for name in SEARCHED if getattr(args, name, None) is not None}
    from_file = set(read_params(args.params)) & set(SEARCHED) if args.params else set()
    weighting = train.weighting if "weighting" in flags | from_file else None
    return {
        name: getattr(train, name)
        for name in sorted(flags | from_file)
        if name in flags or applies(name, train.algorithm, weighting)
    }


def _print_tune_summary(result: dict[str, Any], out: Path) -> None:
    tuning = result["tuning"]
    detail, metric = tuning["trials_detail"], tuning["metric"]
    trials = f"{detail['completed']} completed, {detail['failed']} failed"
    if detail["interrupted"]:
        trials += f", {detail['interrupted']} interrupted"
    if detail["resumed"]:
        trials += f"; {detail['resumed']} of them from an earlier run"
    print(f"trials: {trials}")
    print(f"validation {metric}: {tuning['validation']:.4f} ({tuning['validation_means']})")
    print(
        f"test {metric}: {tuning['test'][metric]:.4f} (the chosen parameters fit on the whole "
        f"training part, measured once on the {tuning['protocol']} test part)"
    )
    params = " ".join(f"{name}={value}" for name, value in result["params"].items())
    pinned = ", ".join(tuning["pinned"]) or "none"
    print(f"chosen parameters: {params} (pinned: {pinned})")
    print(f"written to {out}; trials kept in {tuning['storage']}")


def add_models(commands: Any) -> None:
    p = commands.add_parser(
        "models",
        help="list, show, verify or prune the model store",
        description="Inspect and maintain the model store.",
    )
    actions = p.add_subparsers(title="actions", metavar="ACTION", required=True)
    for name, text in [
        ("list", "one line per version (the latest is marked *)"),
        ("show", "a version's manifest (default: the latest)"),
        ("verify", "check every file's checksum (default: every version); exit 1 on damage"),
        ("gc", "remove old versions, keeping the latest and the --keep newest"),
        (
            "use",
            "point LATEST at a version (roll back or forward) once it loads fully, as serving "
            "would load it; servers swap to it",
        ),
    ]:
        sub = actions.add_parser(name, help=text, description=text)
        sub.add_argument("--model-store", type=Path, help="model store directory")
        if name in ("show", "verify"):
            sub.add_argument("version", nargs="?", help="a version name")
        if name == "use":
            sub.add_argument("version", help="a version name (it must load as serving loads it)")
            add_who_and_why(sub, reason_required=False)
        if name == "gc":
            sub.add_argument("--keep", type=int, default=3, help="newest versions kept (default 3)")
        namespace_option(sub)
        common_options(sub)
        sub.set_defaults(run=_run_models, action=name)
    add_models_sync(actions)
    add_models_promote(actions)
    add_models_history(actions)


def _run_models(args: argparse.Namespace) -> int:
    from recsvc.artifacts import ModelStore
    from recsvc.errors import ArtifactError

    settings = settings_from(args, model_store=args.model_store)
    store = ModelStore.from_settings(settings)
    latest = store.latest_version()
    if args.action == "list":
        for version in store.list_versions():
            mark = "*" if version == latest else " "
            try:
                m = store.read_manifest(version)
                print(
                    f"{mark} {version}  {m.algorithm}  users={m.num_users} items={m.num_items} "
                    f"interactions={m.num_interactions} factors={m.factors} on={m.trained_on}"
                )
            except ArtifactError as exc:
                print(f"{mark} {version}  UNREADABLE: {exc}")
        return 0
    if args.action == "show":
        shown: str | None = args.version or latest
        if shown is None:
            raise ArtifactError(f"no model published in {store.root}")
        print(store.read_manifest(shown).model_dump_json(indent=2))
        return 0
    if args.action == "verify":
        failed = 0
        for version in [args.version] if args.version else store.list_versions():
            try:
                store.verify(version)
                print(f"ok      {version}")
            except ArtifactError as exc:
                failed += 1
                print(f"FAILED  {version}: {exc}")
        return 1 if failed else 0
    if args.action == "use":
        promote(settings, args.version, args.by, args.reason)
        return 0
    if args.keep < 1:
        raise ArtifactError("--keep must be at least 1")
    for version in store.collect_garbage(args.keep):
        print(f"removed {version}")
    return 0


def _interactions_path(args: argparse.Namespace) -> Path:
    if args.interactions is None:
        raise ConfigError("--interactions: an interactions file is required")
    path: Path = args.interactions
    return path


def _add_data_options(p: argparse.ArgumentParser, many: bool = False) -> None:
    g = p.add_argument_group("input data")
    if many:
        g.add_argument(
            "--interactions",
            type=Path,
            nargs="+",
            required=True,
            help="interaction files, or directories of them",
        )
    else:
        g.add_argument("--interactions", type=Path, help="interactions file (required; no default)")
    g.add_argument(
        "--format",
        choices=["auto", "csv", "tsv", "parquet", "movielens"],
        default="auto",
        help="file format (default: from the name)",
    )
    g.add_argument("--user-column", help="user id column (default: found by name)")
    g.add_argument("--item-column", help="item id column (default: found by name)")
    g.add_argument("--weight-column", help="weight column (default: found, else 1 per row)")
    g.add_argument(
        "--timestamp-column",
        help="timestamp column, Unix seconds or ISO-8601 (default: found by name, else none)",
    )
    g.add_argument(
        "--event-column", help="event type column, needs --event-weights (default: none)"
    )
    g.add_argument(
        "--event-weights",
        help="weights per event type, e.g. view=1,cart=3,purchase=5 (default: none)",
    )
    g.add_argument("--strict", action="store_true", help="fail on the first malformed row")
    g.add_argument("--min-user-interactions", type=int, default=1, help="drop sparser users")
    g.add_argument("--min-item-interactions", type=int, default=1, help="drop sparser items")


def _read_options(args: argparse.Namespace) -> Any:
    from recsvc.data.matrix import ReadOptions

    return ReadOptions(
        file_format=args.format,
        user_column=args.user_column,
        item_column=args.item_column,
        weight_column=args.weight_column,
        timestamp_column=args.timestamp_column,
        event_column=args.event_column,
        event_weights=_parse_event_weights(args.event_weights),
        strict=args.strict,
        min_user_interactions=args.min_user_interactions,
        min_item_interactions=args.min_item_interactions,
    )


def _parse_event_weights(text: str | None) -> dict[str, float]:
    from recsvc.errors import ConfigError

    weights: dict[str, float] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name.strip() or weights.get(name.strip(), 0) <= 0:
            raise ConfigError(f"--event-weights: {part!r} is not NAME=POSITIVE_NUMBER")
    return weights


# Model flags: (flag, argparse keywords, what it is); the destination is the setting's name.
_MODEL_FLAGS: list[tuple[str, dict[str, Any], str]] = [
    ("--algorithm", {"choices": ["als", "bpr"]}, "model"),
    ("--weighting", {"choices": ["none", "binary", "bm25", "tfidf"]}, "weights fed to the model"),
    (
        "--weight-transform",
        {"choices": ["none", "log1p"]},
        "applied to each summed weight before the weighting (log1p: log(1 + w), for counts)",
    ),
    ("--bm25-k1", {"type": float}, "BM25 k1 (with --weighting bm25)"),
    ("--bm25-b", {"type": float}, "BM25 b (with --weighting bm25)"),
    ("--factors", {"type": int}, "dimension of the learned factors"),
    ("--iterations", {"type": int}, "sweeps (ALS) or epochs (BPR)"),
    ("--regularization", {"type": float}, "L2 regularisation of the factors"),
    ("--alpha", {"type": float}, "ALS confidence scaling: confidence = alpha x weight"),
    ("--learning-rate", {"type": float}, "BPR learning rate"),
]


def _add_model_options(p: argparse.ArgumentParser, tuning: bool = False) -> None:
    """The model flags. Unset, each falls back on --params, then the config (RECSVC_TRAIN__*);
    in `tune`, a flag pins its parameter and an unset one is searched."""
    from recsvc.config import TrainSettings

    g = p.add_argument_group(
        "model",
        "A flag given pins its parameter; one not given is searched (the config's RECSVC_TRAIN__* "
        "settings do not pin)."
        if tuning
        else "Each flag overrides --params, which overrides the config (RECSVC_TRAIN__*).",
    )
    g.add_argument(
        "--params",
        type=Path,
        help="parameters file written by `recsvc tune`"
        + (" (its parameters are pinned)" if tuning else "")
        + " (default: none)",
    )
    for flag, keywords, text in _MODEL_FLAGS:
        name = flag[2:].replace("-", "_")
        default = TrainSettings.model_fields[name].default
        env = f"RECSVC_TRAIN__{name.upper()}"
        shown = "searched" if tuning and name != "algorithm" else f"{default}, or {env}"
        g.add_argument(flag, help=f"{text} (default: {shown})", **keywords)
    fitting: list[tuple[str, dict[str, Any], str]] = [
        ("device", {"choices": ["auto", "cpu", "cuda"]}, "where to fit"),
        ("threads", {"type": int}, "CPU threads (0 = every core)"),
        ("seed", {"type": int}, "random seed"),
    ]
    for name, options, text in fitting:
        default = TrainSettings.model_fields[name].default
        g.add_argument(
            f"--{name}",
            help=f"{text} (default: {default}, or RECSVC_TRAIN__{name.upper()})",
            **options,
        )
    _add_engine_options(p)


def _add_engine_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("training engine (docs/deploy.md: Training on Spark)")
    g.add_argument(
        "--engine",
        choices=["implicit", "spark"],
        help="implicit (one machine, GPU when present) or spark (pyspark.ml ALS, ALS only; "
        "needs recsvc[spark] and Java 17) (default: implicit, or RECSVC_TRAIN__ENGINE)",
    )
    g.add_argument(
        "--spark-master",
        help="Spark master URL of the spark engine (default: local[*], or "
        "RECSVC_TRAIN__SPARK_MASTER)",
    )
    g.add_argument(
        "--spark-conf",
        action="append",
        metavar="KEY=VALUE",
        help="a Spark setting (spark.*) for the spark engine; repeatable (default: none, or "
        "RECSVC_TRAIN__SPARK_CONF, a JSON object, which these flags extend)",
    )


def _add_split_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("protocol")
    g.add_argument("--protocol", choices=PROTOCOLS, default="stratified-item", help="how to split")
    g.add_argument("--k", type=int, default=10, help="cut-off of the metrics")
    g.add_argument("--ratio", type=float, default=0.75, help="train share for stratified splits")
    g.add_argument("--last-n", type=int, default=1, help="test items per user for leave-last-n")


def _train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Training settings: the --params file, overridden by explicit flags."""
    from recsvc.tuning.search import read_params

    overrides = read_params(args.params) if args.params else {}
    names = [flag[2:].replace("-", "_") for flag, _, _ in _MODEL_FLAGS]
    for name in [*names, "device", "threads", "seed", "engine", "spark_master"]:
        if getattr(args, name, None) is not None:
            overrides[name] = getattr(args, name)
    if getattr(args, "spark_conf", None):
        from recsvc.fitting.spark_als import parse_spark_conf

        overrides["spark_conf"] = parse_spark_conf(args.spark_conf)
    return overrides
