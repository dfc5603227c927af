// The jobs open on this page, remembered by id in localStorage so a reload brings them (and their live view) back.

const KEY = "aijobs.open";
const MAX = 12;

export function openIds() {
  try {
    const ids = JSON.parse(localStorage.getItem(KEY) || "[]");
    return Array.isArray(ids) ? ids.filter((id) => typeof id === "string").slice(0, MAX) : [];
  } catch {
    return [];
  }
}

function save(ids) {
  try {
    localStorage.setItem(KEY, JSON.stringify(ids.slice(0, MAX)));
  } catch {
    // storage full or disabled: the page still works, a reload just forgets the open cards
  }
}

export function remember(id, { replacing } = {}) {
  const ids = openIds().filter((x) => x !== id);
  const at = replacing ? ids.indexOf(replacing) : -1;
  if (at >= 0) ids[at] = id;
  else ids.unshift(id);
  save(ids);
}

export function forget(id) {
  save(openIds().filter((x) => x !== id));
}

export function getPref(name, fallback) {
  return localStorage.getItem(`aijobs.${name}`) ?? fallback;
}

export function setPref(name, value) {
  try {
    localStorage.setItem(`aijobs.${name}`, value);
  } catch {}
}
