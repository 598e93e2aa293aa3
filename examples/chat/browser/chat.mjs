// Opens the chat of examples/chat on server A and on server B in headless Chromium, as two
// people would, and checks that each sees the other's message and that both pages list
// both users. Saves a screenshot of the two pages side by side.
//
//   node chat.mjs URL_A URL_B SCREENSHOT.png
//
// Chromium is Debian's (/usr/bin/chromium, or $CHROMIUM): Playwright's own browser
// download does not work on these machines.
import { chromium } from "playwright-core";

const [urlA, urlB, screenshot] = process.argv.slice(2);
const timeout = 15000;

function fail(msg) {
  console.error("FAIL: " + msg);
  process.exitCode = 1;
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  headless: true,
  chromiumSandbox: false,
  args: ["--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync"],
});
try {
  const open = async (url, name) => {
    const context = await browser.newContext({ viewport: { width: 720, height: 480 } });
    const page = await context.newPage();
    page.setDefaultTimeout(timeout);
    page.on("pageerror", (err) => fail(`${name}: page error: ${err.message}`));
    await page.goto(url);
    await page.fill("#name", name);
    await page.fill("#room", "lobby");
    await page.click("#join-button");
    await page.waitForFunction(() => document.querySelector("#server").textContent !== "…");
    return page;
  };
  const alice = await open(urlA, "Alice");
  const bob = await open(urlB, "Bob");
  const serverOf = (page) => page.textContent("#server");
  if ((await serverOf(alice)) !== "A" || (await serverOf(bob)) !== "B") {
    fail(`pages on servers ${await serverOf(alice)} and ${await serverOf(bob)}, want A and B`);
  }

  const say = async (page, text) => {
    await page.fill("#text", text);
    await page.click("#send-button");
  };
  const sees = (page, selector, text) =>
    page.waitForFunction(([s, t]) => document.querySelector(s).textContent.includes(t), [selector, text]);

  await say(alice, "Hello Bob, I am on server A");
  await say(bob, "Hi Alice, server B here");
  for (const [page, who] of [[alice, "Alice"], [bob, "Bob"]]) {
    await sees(page, "#messages", "Hello Bob, I am on server A");
    await sees(page, "#messages", "Hi Alice, server B here");
    await sees(page, "#online", "Alice");
    await sees(page, "#online", "Bob");
    console.log(`${who}'s page shows both messages and both users`);
  }
  const bobSaw = await bob.textContent("#messages");
  if (!bobSaw.includes("Alice via server A")) fail("Bob's page does not say Alice's message came via server A");

  if (screenshot) {
    const [a, b] = await Promise.all([alice.screenshot(), bob.screenshot()]);
    const sheet = await (await browser.newContext({ viewport: { width: 1500, height: 520 } })).newPage();
    await sheet.setContent(`<body style="margin:0;background:#ccc;display:flex;gap:20px;padding:20px">
      <img src="data:image/png;base64,${a.toString("base64")}">
      <img src="data:image/png;base64,${b.toString("base64")}"></body>`);
    await sheet.screenshot({ path: screenshot });
    console.log("screenshot saved to " + screenshot);
  }
} catch (err) {
  fail(err.stack || String(err));
} finally {
  await browser.close();
}
