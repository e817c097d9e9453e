package tests

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
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
