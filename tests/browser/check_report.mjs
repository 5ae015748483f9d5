// Opens an experiment's report.html in headless Chromium, as a reader would, and fails on
// what a reader would trip over: console errors, failed or external requests, broken
// images, sideways scrolling in a phone-sized window, missing plots, a browser that does
// not sort or enlarge. Saves screenshots at 1280 and 390 px.
//
//   node check_report.mjs RUN_FOLDER SCREENSHOT_FOLDER
//
// Chromium: CHROMIUM_PATH if set, else the binary inside @sparticuz/chromium.

import { mkdirSync } from "node:fs";
import path from "node:path";
import { pathToFileURL } from "node:url";
import puppeteer from "puppeteer-core";

const [runFolder, shots] = process.argv.slice(2);
if (!runFolder || !shots) {
  console.error("usage: node check_report.mjs RUN_FOLDER SCREENSHOT_FOLDER");
  process.exit(2);
}
mkdirSync(shots, { recursive: true });
const report = pathToFileURL(path.resolve(runFolder, "report.html")).href;
const root = pathToFileURL(path.resolve(runFolder)).href + "/";

async function chromiumPath() {
  if (process.env.CHROMIUM_PATH) return { executablePath: process.env.CHROMIUM_PATH, args: [] };
  const chromium = (await import("@sparticuz/chromium")).default;
  return { executablePath: await chromium.executablePath(), args: chromium.args };
}

const problems = [];
const fail = (what) => problems.push(what);
const { executablePath, args } = await chromiumPath();
const browser = await puppeteer.launch({
  executablePath,
  args: [...args, "--no-sandbox"],
  headless: true,
});

async function visit(width, height) {
  const page = await browser.newPage();
  await page.setViewport({ width, height, deviceScaleFactor: 1 });
  const where = `${width} px`;
  page.on("console", (m) => {
    if (m.type() === "error" || m.type() === "warn") fail(`${where}: console ${m.type()}: ${m.text()}`);
  });
  page.on("pageerror", (e) => fail(`${where}: script error: ${e.message}`));
  page.on("requestfailed", (r) => fail(`${where}: request failed: ${r.url()} (${r.failure()?.errorText})`));
  page.on("request", (r) => {
    const url = r.url();
    if (!url.startsWith(root) && !url.startsWith("data:")) fail(`${where}: external request: ${url}`);
  });
  await page.goto(report, { waitUntil: "load" });
  // scroll through the whole page so every lazy thumbnail loads, then wait for them
  await page.evaluate(async () => {
    for (let y = 0; y < document.body.scrollHeight; y += window.innerHeight / 2) {
      window.scrollTo(0, y);
      await new Promise((r) => setTimeout(r, 20));
    }
    window.scrollTo(0, 0);
    await Promise.all(
      [...document.images].map((img) =>
        img.complete ? null : new Promise((r) => { img.onload = img.onerror = r; }),
      ),
    );
  });
  const facts = await page.evaluate(() => {
    const data = JSON.parse(document.getElementById("data").textContent);
    const images = [...document.images];
    return {
      overflow: document.documentElement.scrollWidth - window.innerWidth,
      viewport: !!document.querySelector('meta[name="viewport"]'),
      plots: document.querySelectorAll("#curves svg polyline").length,
      histograms: document.querySelectorAll("#distributions svg rect").length,
      colourBar: !!document.querySelector(".colourbar linearGradient stop"),
      broken: images.filter((i) => !i.complete || i.naturalWidth === 0).map((i) => i.src),
      images: images.length,
      rows: document.querySelectorAll("#grid tbody tr").length,
      expected: data.images.length,
      methods: data.methods.length,
      best: document.querySelectorAll(".metrics td.best").length,
      chance: document.querySelectorAll(".metrics tr.chance").length,
    };
  });
  if (facts.overflow > 0) fail(`${where}: the page scrolls sideways by ${facts.overflow} px`);
  if (!facts.viewport) fail(`${where}: no <meta name=viewport>`);
  if (facts.plots === 0) fail(`${where}: no deletion/insertion curve drawn`);
  if (facts.histograms === 0) fail(`${where}: no metric distribution drawn`);
  if (!facts.colourBar) fail(`${where}: no colour bar`);
  if (facts.broken.length) fail(`${where}: ${facts.broken.length} broken images, e.g. ${facts.broken[0]}`);
  if (facts.rows !== facts.expected) fail(`${where}: ${facts.rows} image rows, expected ${facts.expected}`);
  if (facts.images < facts.expected * (facts.methods + 1)) fail(`${where}: only ${facts.images} pictures`);
  if (facts.best === 0) fail(`${where}: no best value marked`);
  if (facts.chance === 0) fail(`${where}: no chance level rows`);
  console.log(`${where}: ${JSON.stringify({ ...facts, broken: facts.broken.length })}`);
  await page.screenshot({ path: path.join(shots, `report-${width}.png`), fullPage: false });
  return page;
}

const wide = await visit(1280, 900);
// the browser works: "worst 20" sorts and cuts to 20 rows, Enter on a thumbnail enlarges it
await wide.click("#worst");
const worst = await wide.$$eval("#grid tbody tr", (rows) => rows.length);
const expected = await wide.evaluate(() => Math.min(20, JSON.parse(document.getElementById("data").textContent).images.length));
if (worst !== expected) fail(`1280 px: "worst 20" shows ${worst} rows, expected ${expected}`);
await wide.evaluate(() => document.getElementById("images").scrollIntoView());
await wide.screenshot({ path: path.join(shots, "report-1280-images.png") });
await wide.focus("#grid tbody tr td:nth-child(2) button");
await wide.keyboard.press("Enter");
const open = await wide.$eval("#zoom", (d) => d.open);
if (!open) fail("1280 px: Enter on a thumbnail did not open the enlarged view");
await wide.evaluate(() => Promise.all([...document.querySelectorAll("#zoom img")].map((img) =>
  img.complete ? null : new Promise((r) => { img.onload = img.onerror = r; }))));
const zoomBroken = await wide.$$eval("#zoom img", (imgs) => imgs.filter((i) => i.naturalWidth === 0).length);
if (zoomBroken) fail(`1280 px: ${zoomBroken} broken images in the enlarged view`);
await wide.screenshot({ path: path.join(shots, "report-1280-zoom.png") });
await wide.keyboard.press("Escape");
if (await wide.$eval("#zoom", (d) => d.open)) fail("1280 px: Escape did not close the enlarged view");
await visit(390, 844);
await browser.close();

if (problems.length) {
  console.error(`report check FAILED (${problems.length}):\n  ` + problems.join("\n  "));
  process.exit(1);
}
console.log(`report check passed; screenshots in ${shots}`);
