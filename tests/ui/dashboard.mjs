// The dashboard in a real browser: Debian's Chromium driven by playwright-core.
//
// Usage: node dashboard.mjs BASE_URL ADMIN_KEY INFERENCE_KEY CHAT_MODEL SLOW_TASK_ID OUT_DIR HUB_MODEL
// Exits non-zero with a message when a step fails, after a screenshot of the page in
// OUT_DIR; writes the views' screenshots to OUT_DIR either way.
import { chromium } from "playwright-core";

const [base, adminKey, inferenceKey, chatModel, slowTask, outDir, hubModel] = process.argv.slice(2);
const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", args: ["--no-sandbox"] });
const errors = [];
let page;
let step = "start";

async function open(key, width = 1280) {
  const context = await browser.newContext({ viewport: { width, height: 900 } });
  page = await context.newPage();
  page.on("console", (m) => { if (m.type() === "error") errors.push(`${step}: ${m.text()}`); });
  page.on("pageerror", (e) => errors.push(`${step}: ${e.message}`));
  await page.goto(`${base}/ui/`);
  // Sign in: the password field and Enter.
  await page.locator("#key").fill(key);
  await page.locator("#key").press("Enter");
  await page.locator("#nav").waitFor({ state: "visible" });
  return context;
}

async function shot(name) {
  await page.screenshot({ path: `${outDir}/${name}.png`, fullPage: true });
}

try {
  step = "admin signs in and sees a live node";
  const admin = await open(adminKey);
  await page.goto(`${base}/ui/#/cluster`);
  await page.locator(".card[data-node] .badge.ok", { hasText: "live" }).first().waitFor();
  await page.locator(".card[data-node]", { hasText: chatModel }).first().waitFor();
  // The node's GPU, as NVML reports it, with the budget BitingLip may use of it.
  await page.locator('.card[data-node] table.gpus tr[data-gpu="GPU-ui"]', { hasText: "NVIDIA L4" }).waitFor();
  // The prefix cache: the model's hit rate, and its worker's hits and cached tokens (the
  // test's conversation took its second turn's opening from the cache).
  await page.locator(`#cache-rates tr[data-model="${chatModel}"]`).waitFor();
  await page.locator(".card[data-node] td.cache", { hasText: /[1-9][0-9]* \/ [0-9]+ hits/ }).first().waitFor();
  // Metrics at a glance: time to first token, tokens per second and time queued, as charts
  // of the tasks just finished (the test's first chats).
  await page.locator("figure.chart polyline").nth(2).waitFor({ state: "attached", timeout: 30000 });
  await shot("dashboard-cluster");

  step = "the models view lists the model";
  await page.locator('nav a[href="#/models"]').click();
  await page.locator("#view td", { hasText: chatModel }).first().waitFor();

  step = "a pull from the hub, its progress to 100%";
  await page.locator("#pull-model").fill(hubModel);
  await page.locator("#pull-model").press("Enter");
  await page.locator('#pull-progress[data-done="true"]').waitFor({ timeout: 120000 });
  const pulled = await page.locator("#pull-text").textContent();
  if (!pulled.includes("100%")) throw new Error(`the pull's progress: ${pulled}`);
  const width = await page.locator("#pull-progress .bar > span").evaluate((e) => e.style.width);
  if (width !== "100%") throw new Error(`the progress bar is at ${width}`);
  await page.locator(`#models-table tr[data-model="${hubModel}"]`).waitFor();
  await shot("dashboard-models");

  step = "loading it makes a deployment that serves";
  await page.locator(`#models-table tr[data-model="${hubModel}"] button[data-action="load"]`).click();
  await page.locator('nav a[href="#/deployments"]').click();
  // Its row shows the node serving it (the page refreshes itself; the test only looks).
  // Waits on the DOM (the cell showing a node instead of "-"), not on a clock.
  const serving = page.locator(`#deployments-table tr[data-model="${hubModel}"] td:nth-child(4)`, {
    hasNotText: /^\s*-\s*$/,
  });
  await serving.waitFor({ timeout: 180000 }).catch(() => {
    throw new Error("the deployment never served");
  });
  // Its memory estimate (read from the pulled model's config and weights) is shown.
  const estimate = await page.locator(`#deployments-table tr[data-model="${hubModel}"] td.estimate`).textContent();
  if (!/weights .*KV .*tokens × 4/.test(estimate)) throw new Error(`the estimate cell reads ${JSON.stringify(estimate)}`);
  await shot("dashboard-deployments");

  step = "an autoscaled deployment shows its bounds and target";
  await page.locator("#deploy-source").fill("autoscaled-echo");
  await page.locator("#deploy-replicas").fill("0");
  await page.locator("#deploy-min").fill("0");
  await page.locator("#deploy-max").fill("3");
  await page.locator("#deploy-target").fill("1.5");
  await page.locator('#deploy-form button[type="submit"]').click();
  const bounds = page.locator('#deployments-table tr[data-model="autoscaled-echo"] td.autoscale', {
    hasText: "0–3, queue wait < 1.5 s",
  });
  await bounds.waitFor({ timeout: 30000 }).catch(async () => {
    const row = await page.locator("#deployments-table").textContent();
    throw new Error(`the autoscaled deployment's row: ${row}`);
  });
  await page.locator('#deployments-table button[data-undeploy="autoscaled-echo"]').click();

  step = "the playground streams an answer";
  await page.locator('nav a[href="#/playground"]').click();
  await page.locator("#chat-model").selectOption(chatModel);
  await page.locator("#chat-max").fill("12");
  await page.locator("#chat-input").fill("Hello there");
  await page.locator("#chat-input").press("Control+Enter");
  await page.locator('#chat-answer[data-done="true"]').waitFor({ timeout: 60000 });
  const stats = await page.locator("#chat-stats").textContent();
  if (!/completion tokens/.test(stats) || !/first token after/.test(stats)) throw new Error(`usage and time to first token: ${stats}`);
  await shot("dashboard-playground");

  step = "cancelling a running task changes its state";
  await page.locator('nav a[href="#/tasks"]').click();
  await page.locator("#queues-table td", { hasText: "echo-slow" }).first().waitFor();
  // Each tenant's lane of the queue, with its weight and what it was served.
  await page.locator("#tenants-table td", { hasText: "echo-slow" }).first().waitFor();
  const row = page.locator(`#tasks-table tr[data-task="${slowTask}"]`);
  await row.locator("button[data-cancel]").click();
  await page.locator(`#tasks-table tr[data-task="${slowTask}"][data-status="cancelled"]`).waitFor({ timeout: 30000 });
  await row.locator("a[data-task]").click();
  await page.locator("#task-detail", { hasText: "failed" }).waitFor();
  // A finished task shows its timings: queued, first token, in all.
  await page.locator('#tasks-table tr[data-status="completed"] td', { hasText: / ms$/ }).first().waitFor();
  await shot("dashboard-tasks");

  step = "keys and usage";
  await page.locator('nav a[href="#/keys"]').click();
  await page.locator("#keys-table tbody tr").first().waitFor();
  await page.locator("#usage-charts figure.chart").nth(1).waitFor({ state: "attached" });
  // The charts of one model's usage.
  await page.locator(`#usage-of option[value="model:${chatModel}"]`).waitFor({ state: "attached" });
  await page.locator("#usage-of").selectOption(`model:${chatModel}`);
  await page.locator("#usage-charts figcaption", { hasText: "Tokens per day" }).waitFor();
  const tokens = await page.locator("#usage-charts figcaption strong").first().textContent();
  if (!(Number(tokens) > 0)) throw new Error(`${chatModel}'s tokens today: ${tokens}`);
  await page.locator("#usage-table tbody tr").first().waitFor();
  // A key in a tenant, with its weight: the table shows both.
  await page.locator("#key-name").fill("team key");
  await page.locator("#key-tenant").fill("team-ui");
  await page.locator("#key-weight").fill("4");
  await page.locator("#key-form button[type=submit]").click();
  await page.locator("#key-secret", { hasText: "shown once" }).waitFor();
  const teamRow = page.locator("#keys-table tbody tr", { hasText: "team-ui" });
  await teamRow.waitFor();
  if (!(await teamRow.textContent()).includes("4")) throw new Error(`the tenant key's row: ${await teamRow.textContent()}`);
  await shot("dashboard-keys");
  await admin.close();

  step = "a key without admin scope sees no admin view";
  const user = await open(inferenceKey);
  for (const view of ["cluster", "models", "deployments", "keys"]) {
    if (await page.locator(`nav a[href="#/${view}"]`).isVisible()) throw new Error(`an inference key sees ${view}`);
  }
  await page.goto(`${base}/ui/#/cluster`);
  await page.locator('#view[data-view="playground"]').waitFor();
  // Its own chat, then its own tasks and usage.
  await page.locator("#chat-model").selectOption(chatModel);
  await page.locator("#chat-max").fill("6");
  await page.locator("#chat-input").fill("Mine");
  await page.locator("#chat-send").click();
  await page.locator('#chat-answer[data-done="true"]').waitFor({ timeout: 60000 });
  await page.locator('nav a[href="#/tasks"]').click();
  await page.locator("#own-usage tbody tr", { hasText: chatModel }).waitFor({ timeout: 30000 });
  // The task list and the usage come in their own requests: wait for the list too.
  await page.locator("#tasks-table tbody tr").first().waitFor({ timeout: 30000 });
  const rows = await page.locator("#tasks-table tbody tr").count();
  if (rows !== 1) throw new Error(`an inference key sees ${rows} tasks, not its own one`);
  await user.close();

  step = "a phone's width";
  const phone = await open(adminKey, 390);
  await page.locator(".card[data-node]").first().waitFor();
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth > window.innerWidth + 1);
  if (overflow) throw new Error("the page is wider than a phone's screen");
  await shot("dashboard-phone");
  await phone.close();

  if (errors.length) throw new Error(`console errors:\n${errors.join("\n")}`);
  console.log("ok all");
} catch (err) {
  if (page) await page.screenshot({ path: `${outDir}/failed.png`, fullPage: true }).catch(() => {});
  console.error(`${step}: ${err.message}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
