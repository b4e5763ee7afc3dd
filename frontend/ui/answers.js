// What the vision-language model said, as page elements: an event's description and a rule's answer
// (the question, yes/no with its score and the model's reason, or why there is no answer). A model's
// words are untrusted text: set with textContent only, cut to a length a row can show.

const MAX_CHARS = 600; // the service bounds them too (VLM_ANSWER_MAX_CHARS); a row shows less

function bounded(value) {
  if (typeof value !== "string") return "";
  return value.length > MAX_CHARS ? `${value.slice(0, MAX_CHARS)}…` : value;
}

/** The event's description, or null when it has none. */
export function descriptionElement(event) {
  const words = bounded(event && event.description);
  if (!words) return null;
  const p = document.createElement("p");
  p.className = "vlm-description";
  p.textContent = words;
  if (typeof event.description_model === "string") p.title = `Described by ${bounded(event.description_model)}`;
  return p;
}

/** One rule's answer ({rule, question, answer, score, text, error}) as a list item. */
export function answerElement(answer) {
  const li = document.createElement("li");
  li.className = "vlm-answer";
  const question = document.createElement("span");
  question.className = "vlm-question";
  question.textContent = bounded(answer.question) || bounded(answer.rule) || "question";
  const verdict = document.createElement("strong");
  const said = answer.answer === "yes" || answer.answer === "no" ? answer.answer : null;
  li.dataset.answer = said ?? (answer.error ? "error" : "unsure");
  if (answer.error) {
    verdict.textContent = "no answer";
  } else {
    const score = typeof answer.score === "number" ? ` (${answer.score.toFixed(2)})` : "";
    verdict.textContent = `${said ?? "no verdict"}${score}`;
  }
  const reason = document.createElement("span");
  reason.className = "vlm-reason";
  reason.textContent = bounded(answer.error || answer.reason || answer.text);
  li.append(question, " → ", verdict, reason.textContent ? ": " : "", reason);
  return li;
}

/** An event's answers (a list), or null when it has none. */
export function answersElement(answers) {
  if (!Array.isArray(answers) || !answers.length) return null;
  const ul = document.createElement("ul");
  ul.className = "vlm-answers";
  ul.append(...answers.filter((a) => a && typeof a === "object").slice(0, 8).map(answerElement));
  return ul;
}
