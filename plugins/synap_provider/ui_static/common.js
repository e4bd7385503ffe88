// Shared by the plugin's pages; ui.py puts it where a page says /* common.js */.
// An element with attributes (onclick as a handler) and children (text is escaped by the DOM).
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "onclick") node.onclick = v; else node.setAttribute(k, v);
  }
  for (const child of children) node.append(child instanceof Node ? child : String(child ?? ""));
  return node;
}
// A count as people read it; "-" for none.
function n(x) { return x == null ? "-" : Number(x).toLocaleString("en"); }
