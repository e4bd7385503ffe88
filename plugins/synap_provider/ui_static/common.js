// Shared by the plugin's pages; ui_app.py puts it where a page says /* common.js */.
// An element with attributes (onclick as a handler) and children (text is escaped by the DOM).
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "onclick") node.onclick = v; else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child instanceof Node ? child : String(child ?? ""));
  return node;
}
// The element with this id, now holding just these children.
function fill(id, ...children) { document.getElementById(id).replaceChildren(...children); }
// A count as people read it; "-" for none.
function n(x) { return x == null ? "-" : Number(x).toLocaleString("en"); }
// Why the server refused a request, in one line: its "detail" (FastAPI's and Airflow's REST API's
// answer), else the status. Shown where the request was made, never thrown away.
async function refusal(r) {
  let detail = null;
  try { detail = (await r.json()).detail; } catch (e) { /* not JSON: the status says it */ }
  if (Array.isArray(detail)) detail = detail.map(d => (d && d.msg) || JSON.stringify(d)).join("; ");
  else if (detail && typeof detail === "object") detail = detail.message || JSON.stringify(detail);
  const line = detail ? String(detail).split("\n")[0].trim() : "";
  return line ? line + " (HTTP " + r.status + ")" : "HTTP " + r.status;
}
// A paused DAG's queued run waits for good: say so, with the way out (Airflow's own API).
function pausedNotice(dag, then) {
  const button = el("button", {id: "unpause"}, "Unpause " + dag);
  button.onclick = async () => {
    button.disabled = true;
    const r = await fetch("/api/v2/dags/" + encodeURIComponent(dag) + "?update_mask=is_paused",
      {method: "PATCH", credentials: "same-origin", headers: {"Content-Type": "application/json"},
       body: JSON.stringify({is_paused: false})});
    if (!r.ok) { button.replaceWith(el("span", {class: "failure"}, "not unpaused: " + await refusal(r))); return; }
    if (then) then();
  };
  return el("div", {class: "notice paused-notice"}, "The DAG " + dag + " is paused: its runs wait, queued,"
    + " until it is unpaused (the toggle on the DAG's page, or airflow dags unpause " + dag + "). ", button);
}
// Airflow's own look: its UI (Chakra) keeps its colours and font in CSS variables on the page that
// frames this one (same origin). They replace common.css's defaults, light or dark as Airflow is.
(function adoptAirflowLook() {
  let root = null;
  try { root = window.parent !== window ? window.parent.document.documentElement : null; } catch (e) { return; }
  if (!root) return;
  const theirs = window.parent.getComputedStyle(root);
  const mine = document.documentElement.style;
  const tokens = {"--synap-fg": "--chakra-colors-fg", "--synap-muted": "--chakra-colors-fg-muted",
    "--synap-bg": "--chakra-colors-bg", "--synap-subtle": "--chakra-colors-bg-subtle",
    "--synap-border": "--chakra-colors-border", "--synap-font": "--chakra-fonts-body",
    "--synap-accent": "--chakra-colors-blue-solid", "--synap-danger-bg": "--chakra-colors-red-subtle",
    "--synap-danger-fg": "--chakra-colors-red-fg", "--synap-warn-bg": "--chakra-colors-orange-subtle",
    "--synap-ok-bg": "--chakra-colors-green-subtle", "--synap-ok-fg": "--chakra-colors-green-fg"};
  for (const [ours, airflows] of Object.entries(tokens)) {
    const value = theirs.getPropertyValue(airflows).trim();
    if (value) mine.setProperty(ours, value);
  }
  mine.colorScheme = root.classList.contains("dark") ? "dark" : "light";
})();
