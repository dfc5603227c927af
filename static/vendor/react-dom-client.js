// "react-dom/client" for pages without a build step: re-exports createRoot and hydrateRoot from React DOM
// 18.3.1's UMD build (react-dom.production.min.js beside this file, loaded first by a classic <script>, after
// React's). See react.js beside this file.
const ReactDOM = window.ReactDOM;
if (!ReactDOM) {
  throw new Error('Load /static/vendor/react-dom.production.min.js (a classic script) before importing "react-dom/client".');
}

export const { createRoot, hydrateRoot } = ReactDOM;
export default { createRoot, hydrateRoot };
