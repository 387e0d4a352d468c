"""What the console's browser tests share: the world a module's tests run in, Debian's chromium
driven by Playwright, the sign-in, where the screenshots go (.stack/test-artifacts/console/),
and placing an order."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import httpx
from playwright.async_api import Page, async_playwright

from stack import Stack
from stack.issuer import UserTokens

REPO: Final = Path(__file__).resolve().parents[3]
ARTIFACTS: Final = REPO / ".stack" / "test-artifacts" / "console"
CHROMIUM: Final = "/usr/bin/chromium"
CHROMIUM_FLAGS: Final = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@dataclass
class ConsoleWorld:
    """What every console test module runs against: the stack, the console's address and token,
    and the database its order API writes to. A module's own world adds its fields after these.
    """

    stack: Stack
    token: str
    url: str
    database: str

    @property
    def order_url(self) -> str:
        return f"http://127.0.0.1:{self.stack.port_of('order')}"

    def customer(self, user: str) -> dict[str, str]:
        """The bearer header of customer ``user`` for the order API (the stack's issuer)."""
        return UserTokens.for_stack(self.stack.config).headers(user)


@asynccontextmanager
async def chromium_page() -> AsyncIterator[Page]:
    """A page of a fresh headless chromium; fails the test if any page opens a dialog (a
    script that ran would most likely open one)."""
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = await browser.new_page(viewport={"width": 1280, "height": 900})
        dialogs: list[str] = []
        page.on("dialog", lambda dialog: dialogs.append(dialog.message))
        try:
            yield page
            assert dialogs == [], f"a page ran a script: {dialogs}"
        finally:
            await browser.close()


async def sign_in(page: Page, url: str, token: str, then: str = "/") -> None:
    """Sign in through the form and land on ``then``."""
    await page.goto(f"{url}/login?next={then}")
    await page.fill("input[name=token]", token)
    await page.click("button[type=submit]")
    assert page.url == url + then, page.url


async def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


async def place_order(
    world: ConsoleWorld, *, user: str, email: str, sku: str, unit_price: str
) -> str:
    """``POST /orders`` of one item, as customer ``user`` would; returns the new order's id."""
    body = {
        "userId": user,
        "customerEmail": email,
        "items": [{"sku": sku, "quantity": 1, "unitPrice": unit_price}],
    }
    async with httpx.AsyncClient(timeout=10) as http:
        answer = await http.post(
            f"{world.order_url}/orders", json=body, headers=world.customer(user)
        )
    assert answer.status_code == 201, answer.text
    order_id: str = answer.json()["id"]
    return order_id
