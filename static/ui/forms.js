// One form per job type, behind a radio group: pick what to make, fill it in, Generate.
import { createJob } from "/static/jobs-client.js";
import { h } from "./dom.js";
import { getPref, setPref } from "./store.js";

const SAMPLE_POST =
  "Background jobs keep web pages fast while slow AI calls run elsewhere. A worker calls the model, " +
  "and the browser watches the progress live instead of waiting on one long request.";

const num = (v) => Number.parseInt(v, 10);

export const TYPES = {
  titles: {
    label: "Titles from a post",
    button: "Generate titles",
    fields: [
      { name: "text", label: "Your post", kind: "textarea", rows: 6, value: SAMPLE_POST },
      { name: "count", label: "How many titles", kind: "number", min: 1, max: 10, value: "5" },
      { name: "tone", label: "Tone", kind: "select", options: ["neutral", "catchy", "formal", "playful"] },
    ],
    input: (f) => ({ text: f.text, count: num(f.count), tone: f.tone }),
  },
  summary: {
    label: "Summary",
    button: "Summarize",
    fields: [
      { name: "text", label: "Text to summarize", kind: "textarea", rows: 6, value: SAMPLE_POST },
      { name: "max_sentences", label: "At most this many sentences", kind: "number", min: 1, max: 10, value: "3" },
    ],
    input: (f) => ({ text: f.text, max_sentences: num(f.max_sentences) }),
  },
  chat: {
    label: "Chat",
    button: "Send",
    fields: [{ name: "message", label: "Your message", kind: "textarea", rows: 4, value: "How do background jobs help?" }],
    input: (f) => ({ messages: [{ role: "user", content: f.message }] }),
  },
  image: {
    label: "Image",
    button: "Generate image",
    fields: [
      { name: "prompt", label: "Describe the image", kind: "textarea", rows: 3, value: "A lighthouse at dusk" },
      { name: "n", label: "How many images", kind: "number", min: 1, max: 4, value: "1" },
      { name: "size", label: "Size", kind: "select", options: ["512x512", "256x256", "1024x1024"] },
    ],
    input: (f) => ({ prompt: f.prompt, n: num(f.n), size: f.size }),
  },
};

function field(type, spec) {
  const id = `${type}-${spec.name}`;
  let control;
  if (spec.kind === "textarea") {
    control = h("textarea", { id, name: spec.name, rows: spec.rows, required: true, value: spec.value });
  } else if (spec.kind === "select") {
    control = h("select", { id, name: spec.name }, ...spec.options.map((o) => h("option", { value: o, text: o })));
  } else {
    control = h("input", { id, name: spec.name, type: "number", min: spec.min, max: spec.max, required: true });
    control.value = spec.value;
  }
  return h("div", { class: `field field-${spec.kind}` }, h("label", { for: id, text: spec.label }), control);
}

/** Build the type picker and the forms into `root`; `onCreated(job)` gets each accepted job. */
export function mountForms(root, { onCreated }) {
  const picker = h("fieldset", { class: "picker" }, h("legend", { text: "What to make" }));
  const forms = {};
  const show = (type) => {
    for (const [name, form] of Object.entries(forms)) form.hidden = name !== type;
    setPref("type", type);
  };
  const chosen = TYPES[getPref("type", "titles")] ? getPref("type", "titles") : "titles";
  for (const [type, spec] of Object.entries(TYPES)) {
    const id = `pick-${type}`;
    picker.append(
      h(
        "span",
        { class: "pick" },
        h("input", { type: "radio", name: "job-type", id, value: type, checked: type === chosen, onchange: () => show(type) }),
        h("label", { for: id, text: spec.label }),
      ),
    );
    const error = h("p", { class: "form-error", role: "alert" });
    const button = h("button", { type: "submit", class: "primary", text: spec.button });
    const form = h(
      "form",
      { id: `form-${type}`, "data-type": type, "aria-label": spec.label },
      ...spec.fields.map((f) => field(type, f)),
      h("div", { class: "form-actions" }, button),
      error,
    );
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      error.textContent = "";
      const values = Object.fromEntries(new FormData(form));
      button.disabled = true;
      button.textContent = "Submitting…";
      try {
        const job = await createJob(type, spec.input(values));
        onCreated(job);
      } catch (err) {
        error.textContent = `Could not start the job: ${err.message}`;
      } finally {
        button.disabled = false;
        button.textContent = spec.button;
      }
    });
    forms[type] = form;
  }
  root.replaceChildren(picker, ...Object.values(forms));
  show(chosen);
}
