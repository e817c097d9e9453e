package tests

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/guest-puller/guest-puller/internal/testutil"
)

// TestDocLinks: every document the README and docs/ send a reader to is
// in the repository, and every #anchor names a heading of it. (A page
// outside the repository, such as the developers' design notes, is no
// help to a user.)
func TestDocLinks(t *testing.T) {
	pages, err := filepath.Glob(filepath.Join("..", "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	pages = append(pages, filepath.Join("..", "README.md"))
	if len(pages) < 5 {
		t.Fatalf("found %d pages", len(pages))
	}
	link := regexp.MustCompile(`\]\(([^)\s]+)\)`)
	for _, page := range pages {
		data, err := os.ReadFile(page)
		if err != nil {
			t.Fatal(err)
		}
		text := string(data)
		if strings.Contains(text, "DESIGN.md") {
			t.Errorf("%s sends readers to DESIGN.md, which is not in the repository", page)
		}
		for _, m := range link.FindAllStringSubmatch(text, -1) {
			target := m[1]
			if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
				continue
			}
			file, anchor, _ := strings.Cut(target, "#")
			path := page
			if file != "" {
				path = filepath.Join(filepath.Dir(page), file)
			}
			linked, err := os.ReadFile(path)
			if err != nil {
				t.Errorf("%s links to %s: %v", page, target, err)
				continue
			}
			if anchor != "" && !hasHeading(string(linked), anchor) {
				t.Errorf("%s links to %s: no heading %q there", page, target, anchor)
			}
		}
	}
}

// hasHeading reports whether markdown has a heading whose GitHub anchor
// is anchor.
func hasHeading(markdown, anchor string) bool {
	for _, line := range strings.Split(markdown, "\n") {
		title, ok := strings.CutPrefix(strings.TrimLeft(line, "#"), " ")
		if !ok || !strings.HasPrefix(line, "#") {
			continue
		}
		slug := strings.Map(func(r rune) rune {
			switch {
			case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '-', r == '_':
				return r
			case r >= 'A' && r <= 'Z':
				return r + 'a' - 'A'
			case r == ' ':
				return '-'
			}
			return -1
		}, title)
		if slug == anchor {
			return true
		}
	}
	return false
}

// TestArchitectureDependencies holds docs/ARCHITECTURE.md's dependency
// picture to the code: every arrow in it is an import (go list), and every
// import between the module's packages is an arrow, so the picture cannot
// go stale and a new import that breaks the layering (pull importing
// attest, say) fails here until the picture, reviewed, says it.
func TestArchitectureDependencies(t *testing.T) {
	const module = "github.com/guest-puller/guest-puller/"
	out, err := exec.Command("go", "list", "-f", `{{.ImportPath}} {{join .Imports " "}}`, "../...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	// Test support and the benchmark's tools are not the product.
	skip := func(pkg string) bool {
		return strings.HasPrefix(pkg, "tests") || strings.HasPrefix(pkg, "internal/testutil") ||
			strings.HasPrefix(pkg, "internal/tools") || pkg == "internal/devkbs/devkbstest"
	}
	known := map[string]bool{}
	actual := map[[2]string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		fields := strings.Fields(line)
		from := strings.TrimPrefix(fields[0], module)
		if skip(from) {
			continue
		}
		known[from] = true
		for _, imp := range fields[1:] {
			if to, ok := strings.CutPrefix(imp, module); ok {
				actual[[2]string{from, to}] = true
			}
		}
	}
	if len(actual) < 50 {
		t.Fatalf("go list found %d imports between the module's packages", len(actual))
	}

	doc, err := os.ReadFile(filepath.Join("..", "docs", "ARCHITECTURE.md"))
	if err != nil {
		t.Fatal(err)
	}
	_, picture, ok := strings.Cut(string(doc), "## Dependencies point one way")
	if ok {
		_, picture, ok = strings.Cut(picture, "```\n")
	}
	if ok {
		picture, _, ok = strings.Cut(picture, "```")
	}
	if !ok {
		t.Fatal("docs/ARCHITECTURE.md has no picture under \"Dependencies point one way\"")
	}
	// A line ending in a comma goes on; parentheses are notes.
	picture = regexp.MustCompile(`,\s*\n\s*`).ReplaceAllString(picture, ", ")
	notes := regexp.MustCompile(`\([^)]*(\)|$)`)
	stated := map[[2]string]bool{}
	anyone := map[string]bool{} // "everything ─► X"
	for _, line := range strings.Split(picture, "\n") {
		if !strings.Contains(line, "─►") {
			continue
		}
		var steps [][]string
		for _, seg := range strings.Split(notes.ReplaceAllString(line, ""), "─►") {
			var pkgs []string
			for _, p := range strings.Split(seg, ",") {
				p = strings.TrimSpace(p)
				if p != "everything" && !known[p] {
					t.Errorf("picture line %q names %q, which is no package of the module", strings.TrimSpace(line), p)
				}
				pkgs = append(pkgs, p)
			}
			steps = append(steps, pkgs)
		}
		for i := 0; i+1 < len(steps); i++ {
			for _, from := range steps[i] {
				for _, to := range steps[i+1] {
					if from == "everything" {
						anyone[to] = true
						continue
					}
					stated[[2]string{from, to}] = true
					if !actual[[2]string{from, to}] {
						t.Errorf("the picture says %s imports %s; it does not", from, to)
					}
				}
			}
		}
	}
	for e := range actual {
		if !stated[e] && !anyone[e[1]] {
			t.Errorf("%s imports %s; docs/ARCHITECTURE.md's picture does not say so", e[0], e[1])
		}
	}
}

// TestDocCommands: what the README and docs/ say to type or to read is
// there. Every flag written after `guest-puller COMMAND` is one of that
// command's flags (its -h, held in cmd/guest-puller/testdata/help), every
// flag written after `dev-kbs` one of dev-kbs's, and every path of this
// repository, every test, benchmark and fuzz target and every make target
// they name exists.
func TestDocCommands(t *testing.T) {
	pages, err := filepath.Glob(filepath.Join("..", "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	pages = append(pages, filepath.Join("..", "README.md"))
	helpFlag := regexp.MustCompile(`(?m)^\s+--([a-z][a-z0-9-]*)`)
	flagsOf := map[string]map[string]bool{}
	commands := []string{"policy check", "cache ls", "cache rm", "cache gc", "attest ak", "pull", "serve", "keyprovider", "version", "encrypt", "cdh"}
	for _, c := range commands {
		help, err := os.ReadFile(filepath.Join("..", "cmd", "guest-puller", "testdata", "help", strings.ReplaceAll(c, " ", "-")+".txt"))
		if err != nil {
			t.Fatal(err)
		}
		flagsOf[c] = map[string]bool{"help": true}
		for _, m := range helpFlag.FindAllStringSubmatch(string(help), -1) {
			flagsOf[c][m[1]] = true
		}
	}
	// dev-kbs has no golden help: its own -h says.
	devKBSHelp := testutil.Exec(t, nil, bins["dev-kbs"], "-h")
	flagsOf["dev-kbs"] = map[string]bool{"help": true}
	for _, m := range regexp.MustCompile(`(?m)^\s+-{1,2}([a-z][a-z0-9-]*)`).FindAllStringSubmatch(devKBSHelp.Stdout+devKBSHelp.Stderr, -1) {
		flagsOf["dev-kbs"][m[1]] = true
	}
	if len(flagsOf["pull"]) < 10 || len(flagsOf["dev-kbs"]) < 5 {
		t.Fatalf("pull's help lists %d flags, dev-kbs's %d", len(flagsOf["pull"]), len(flagsOf["dev-kbs"]))
	}
	invocation := regexp.MustCompile(`(?:guest-puller (` + strings.Join(commands, "|") + `)|(dev-kbs))\b([^` + "`" + `|#\n]*)`)
	flag := regexp.MustCompile(`(?:^|\s)--([a-z][a-z0-9-]*)`)
	// Paths under the repository's own top-level directories.
	tops, err := os.ReadDir("..")
	if err != nil {
		t.Fatal(err)
	}
	var dirs []string
	for _, e := range tops {
		if e.IsDir() && !strings.HasPrefix(e.Name(), ".") {
			dirs = append(dirs, regexp.QuoteMeta(e.Name()))
		}
	}
	repoPath := regexp.MustCompile(`(?:^|[\s(` + "`" + `])((?:` + strings.Join(dirs, "|") + `)/[\w./-]*[\w/])`)
	// Every test, benchmark and fuzz target of the repository, by name.
	testFunc := regexp.MustCompile(`(?m)^func ((?:Test|Benchmark|Fuzz)[A-Z]\w*)\(`)
	tests := map[string]bool{}
	err = filepath.WalkDir("..", func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, "_test.go") {
			return err
		}
		data, err := os.ReadFile(path)
		for _, m := range testFunc.FindAllStringSubmatch(string(data), -1) {
			tests[m[1]] = true
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	testName := regexp.MustCompile(`\b((?:Test|Benchmark|Fuzz)[A-Z]\w*)`)
	makefile, err := os.ReadFile(filepath.Join("..", "Makefile"))
	if err != nil {
		t.Fatal(err)
	}
	targets := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^([a-z][a-z-]*):`).FindAllStringSubmatch(string(makefile), -1) {
		targets[m[1]] = true
	}
	// In backticks, as a command line of a code block, or after an
	// environment assignment (FUZZ_TIME=1m make fuzz).
	makeTarget := regexp.MustCompile("(?m)(?:`|^|=\\S* )make ([a-z][a-z-]*)(?:`|\\s+#|[ \\t]*$)")
	checked := 0
	for _, page := range pages {
		data, err := os.ReadFile(page)
		if err != nil {
			t.Fatal(err)
		}
		// Shell lines continued with a backslash are one command.
		text := regexp.MustCompile(`\\\n\s*`).ReplaceAllString(string(data), " ")
		for _, m := range invocation.FindAllStringSubmatch(text, -1) {
			cmd := m[1] + m[2]
			for _, f := range flag.FindAllStringSubmatch(m[3], -1) {
				checked++
				if !flagsOf[cmd][f[1]] {
					t.Errorf("%s: %s has no flag --%s (%s)", page, cmd, f[1], strings.TrimSpace(m[0]))
				}
			}
		}
		for _, m := range makeTarget.FindAllStringSubmatch(text, -1) {
			checked++
			if !targets[m[1]] {
				t.Errorf("%s says make %s, and the Makefile has no such target", page, m[1])
			}
		}
		for _, m := range testName.FindAllStringSubmatch(text, -1) {
			if m[1] == "FuzzXxx" { // a placeholder
				continue
			}
			checked++
			if !tests[m[1]] {
				t.Errorf("%s names %s, which no _test.go file defines", page, m[1])
			}
		}
		for _, m := range repoPath.FindAllStringSubmatch(text, -1) {
			p := m[1]
			if strings.Contains(p, "COMMAND") { // a placeholder
				continue
			}
			checked++
			if _, err := os.Stat(filepath.Join("..", p)); err != nil {
				t.Errorf("%s names %s, which is not in the repository", page, p)
			}
		}
	}
	if checked < 50 {
		t.Fatalf("only %d flags and paths checked: the patterns no longer match the pages", checked)
	}
}
