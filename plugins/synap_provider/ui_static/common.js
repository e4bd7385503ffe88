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
// A paused DAG's queued run waits for good: say so, with the way out (Airflow's own API).
function pausedNotice(dag, then) {
  const button = el("button", {id: "unpause"}, "Unpause " + dag);
  button.onclick = async () => {
    button.disabled = true;
    const r = await fetch("/api/v2/dags/" + encodeURIComponent(dag) + "?update_mask=is_paused",
      {method: "PATCH", credentials: "same-origin", headers: {"Content-Type": "application/json"},
       body: JSON.stringify({is_paused: false})});
    if (!r.ok) { button.replaceWith(el("span", {class: "failure"}, "not unpaused: HTTP " + r.status)); return; }
    if (then) then();
  };
  return el("div", {class: "notice paused-notice"}, "The DAG " + dag + " is paused: its runs wait, queued,"
    + " until it is unpaused (the toggle on the DAG's page, or airflow dags unpause " + dag + "). ", button);
}
