"""Text rendering of the four WebShop pages (search, results, item, item detail) and their clickables.

Each renderer returns ``(text, clickables)``; clickables are lower case, and the env's admissible actions
are ``click[<clickable>]`` (plus ``search[<your query>]`` on the search page). ``terse=True`` (the small
preset) drops the ``[SEP]`` layout for one short line per element.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from envs.shop.catalogue import Product

BACK, PREV, NEXT, BUY = "back to search", "< prev", "next >", "buy now"
DETAILS = ("description", "features", "reviews")
SEARCH_ACTION = "search[<your query>]"  # the admissible-action marker of the search page


def search_page(*, terse: bool) -> tuple[str, list[str]]:
    return ("Search page: type a query." if terse else "WebShop [SEP] [Search]"), []


def results_page(products: Sequence[Product], *, page: int, n_pages: int, total: int,
                 terse: bool) -> tuple[str, list[str]]:
    """``products`` are the ones shown on ``page`` (1-based) of ``n_pages``."""
    clickables = [BACK]
    if page > 1:
        clickables.append(PREV)
    if page < n_pages:
        clickables.append(NEXT)
    clickables.extend(p.pid for p in products)
    if terse:
        head = f"Results page {page}/{max(n_pages, 1)} ({total} found)"
        rows = [f"[{p.pid}] {p.title} ${p.price:.2f}" for p in products]
        return (head + (":\n" + "\n".join(rows) if rows else ": no results."), clickables)
    parts = ["[Back to Search]", f"Page {page} (Total results: {total})"]
    if page > 1:
        parts.append("[< Prev]")
    if page < n_pages:
        parts.append("[Next >]")
    for p in products:
        parts += [f"[{p.pid}]", p.title, f"${p.price:.2f}"]
    if not products:
        parts.append("No results.")
    return " [SEP] ".join(parts), clickables


def item_page(product: Product, chosen: Mapping[str, str], *, detail_pages: bool,
              terse: bool) -> tuple[str, list[str]]:
    """The item page: option buttons per dimension, title, price, detail buttons, Buy Now."""
    clickables = [BACK, PREV]
    for values in product.options.values():
        clickables.extend(values)
    if detail_pages:
        clickables.extend(DETAILS)
    clickables.append(BUY)
    selected = ", ".join(f"{d} {v}" for d, v in chosen.items())
    if terse:
        lines = [f"Item {product.pid}: {product.title} ${product.price:.2f}"]
        lines += [f"{d}: {' '.join(vals)}" for d, vals in product.options.items()]
        if selected:
            lines.append(f"selected: {selected}")
        return "\n".join(lines), clickables
    parts = ["[Back to Search]", "[< Prev]"]
    for dim, values in product.options.items():
        parts.append(dim)
        parts.extend(f"[{v}]" for v in values)
    parts += [product.title, f"Price: ${product.price:.2f}", "Rating: N.A."]
    if detail_pages:
        parts += ["[Description]", "[Features]", "[Reviews]"]
    parts.append("[Buy Now]")
    if selected:
        parts.append(f"Selected: {selected}")
    return " [SEP] ".join(parts), clickables


def detail_page(product: Product, which: str, *, terse: bool) -> tuple[str, list[str]]:
    """Description / Features / Reviews of ``product``."""
    if which == "description":
        body = product.description or "No description."
    elif which == "features":
        body = " ".join(product.features) or "No features."
    else:
        body = " ".join(product.reviews) or "No reviews."
    text = f"{which.capitalize()}: {body}" if terse else " [SEP] ".join(["[Back to Search]", "[< Prev]", body])
    return text, [BACK, PREV]
