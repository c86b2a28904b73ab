// What the browser tests do on the chat page, shared by chat.test.mjs and
// nginx.test.mjs.

// Joins on an open page under `name` and waits until it is connected.
export async function join(page, name, timeout) {
  await page.fill('#name', name);
  await page.press('#name', 'Enter');
  await page.waitForSelector('#state.online', { timeout });
}

// Types `text` and presses Enter.
export async function say(page, text) {
  await page.fill('#text', text);
  await page.press('#text', 'Enter');
}

// Waits until the page shows a message from `user` with exactly `text`
// (`own`: shown as one's own).
export async function expectMessage(page, user, text, own = false, timeout = 10_000) {
  await page.waitForFunction(
    ([user, text, own]) =>
      [...document.querySelectorAll('#log li')].some(
        (li) =>
          li.querySelector('.user')?.textContent === user &&
          li.querySelector('.text')?.textContent === text &&
          li.classList.contains('own') === own,
      ),
    [user, text, own],
    { timeout },
  );
}
