"""``ctrbench list datasets|models``."""

from __future__ import annotations

import click
from tabulate import tabulate


@click.group(name="list")
def list_() -> None:
    """List what is registered: datasets or models."""


@list_.command(name="datasets")
def list_datasets() -> None:
    """Every dataset card: name, reader, protocol, description.

    \b
    Example:
      ctrbench list datasets
    """
    from ctrbench.cards import dataset_names, load_dataset_card
    from ctrbench.errors import CardError

    rows, errors = [], []
    for name in dataset_names():
        try:
            rows.append(_dataset_row(load_dataset_card(name)))
        except CardError as exc:
            errors.append(exc)
    click.echo(tabulate(rows, headers=["dataset", "reader", "protocol", "description"]))
    _fail_on_broken_cards(errors)


def _dataset_row(card) -> list[str]:
    """name, reader, protocol and the description's first line; a CardError for a value that
    is not text (the card loader does not check these)."""
    from ctrbench.errors import CardError

    values = [card.name, card.reader, card.protocol, card.description]
    for key, value in zip(("reader", "protocol", "description"), values[1:]):
        if not isinstance(value, str):
            raise CardError(f"dataset card {card.path}: {key} = {value!r} "
                            f"({type(value).__name__}): expected a string")
    return [*values[:3], card.description.split("\n")[0]]


@list_.command(name="models")
@click.option("--group", default=None, help="Only this group or glob (e.g. baselines, mian*).")
def list_models(group: str | None) -> None:
    """Every model card: name, architecture, parameters on a reference schema, description.

    \b
    Example:
      ctrbench list models --group ablations
    """
    from ctrbench.cards import load_model_cards, model_names, resolve_model_spec
    from ctrbench.errors import CardError, CtrbenchError
    from ctrbench.models import build_model, count_parameters
    from ctrbench.schema import reference_schema

    if group is not None and not group.replace(",", " ").strip():
        raise click.BadParameter(f"{group!r} names no group or model (e.g. baselines, mian*)",
                                 param_hint="'--group'")
    schema = reference_schema()
    names = resolve_model_spec(group) if group is not None else model_names()
    cards, errors = load_model_cards(names)
    rows = []
    for card in cards:
        try:
            n_params = count_parameters(build_model(card.arch, schema, card.params))
        except CtrbenchError as exc:  # a bad param or architecture: name it, list the rest
            errors.append(CardError(f"model card {card.name!r} ({card.path}): {exc.args[0]}",
                                    hint=exc.hint))
            continue
        rows.append([card.name, card.arch, f"{n_params:,}", ",".join(card.groups),
                     card.description.split("\n")[0]])
    click.echo(tabulate(rows, headers=["model", "arch", "params*", "groups", "description"]))
    click.echo("\n* parameters on the reference schema (1,000 items, 50 categories, T = 30)")
    _fail_on_broken_cards(errors)


def _fail_on_broken_cards(errors) -> None:
    """After listing the readable cards: name each unreadable one once, exit status 1."""
    from ctrbench.cards import report_broken_card

    if errors:
        for error in errors:
            report_broken_card(error)
        raise click.ClickException(f"{len(errors)} card(s) could not be read (listed above); "
                                   "the others are listed")
