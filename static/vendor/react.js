// "react" for pages without a build step: React 18.3.1's UMD build (react.production.min.js beside this file,
// loaded first by a classic <script>) sets window.React, and this module re-exports it, so code written
// `import { useState } from "react"` runs as is once an import map points "react" here
// (/static/examples/react.html). Apps with a bundler import the real package instead and never load this.
const React = window.React;
if (!React) throw new Error('Load /static/vendor/react.production.min.js (a classic script) before importing "react".');

export default React;
export const {
  Children,
  Component,
  Fragment,
  Profiler,
  PureComponent,
  StrictMode,
  Suspense,
  cloneElement,
  createContext,
  createElement,
  createRef,
  forwardRef,
  isValidElement,
  lazy,
  memo,
  startTransition,
  useCallback,
  useContext,
  useDebugValue,
  useDeferredValue,
  useEffect,
  useId,
  useImperativeHandle,
  useInsertionEffect,
  useLayoutEffect,
  useMemo,
  useReducer,
  useRef,
  useState,
  useSyncExternalStore,
  useTransition,
  version,
} = React;
