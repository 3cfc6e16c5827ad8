// MathJax 3 settings for pymdownx.arithmatex (generic mode), which wraps every equation in an
// element of class "arithmatex" using \( \) for inline and \[ \] for display maths.
window.MathJax = {
  tex: {
    inlineMath: [["\\(", "\\)"]],
    displayMath: [["\\[", "\\]"]],
    processEscapes: true,
    processEnvironments: true,
  },
  options: {
    ignoreHtmlClass: ".*|",       // typeset nothing...
    processHtmlClass: "arithmatex", // ...except what arithmatex marked as maths
  },
};

// Material's instant navigation swaps pages without reloading: typeset each new page.
document$.subscribe(() => {
  MathJax.startup.output.clearCache();
  MathJax.typesetClear();
  MathJax.texReset();
  MathJax.typesetPromise();
});
