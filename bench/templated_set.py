"""A dedup set of templated sites with known answers, built from the sample's real pages.

- site: a template of header and footer lines (navigation, legal text: 10-24 lines of 8-16 words, slices
  of one sample page the site owns) around every page's content;
- page: the template around its own content (a slice of another page, 20-400 words, log-normal around
  90, in paragraphs of 20-60 words): pages of one site share the template and nothing else;
- near copy: a page again on its site with 3% of its content words replaced (a true duplicate), and on
  a few sites a page in `cluster` copies (more copies than the boilerplate count: its content is then
  shared by enough pages to look like template);
- standalone: pages on their own hosts, no template.

The truth is the content: two pages are duplicates when their content shingles (template left out) have
a Jaccard of at least the threshold. `score` gives the removed-set precision (removed pages with a true
duplicate in their cluster) and recall (of the removals the true duplicate groups call for).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from paraphrase_set import sample_pages


@dataclass(frozen=True)
class Page:
    url: str
    text: str
    content: str  # what the truth compares


def build(seed: int = 11, sites: int = 40, pages_per_site: int = 8, standalone: int = 80,
          cluster: int = 6) -> list[Page]:
    rng = random.Random(seed)
    sources = sample_pages(min_words=300)
    cursor = {i: 0 for i in range(len(sources))}

    def take(n: int) -> list[str]:
        """n words no other take has used (slices of the sample pages, in turn), so contents differ."""
        for _ in range(len(sources)):
            i = rng.randrange(len(sources))
            if cursor[i] + n <= len(sources[i]):
                out = sources[i][cursor[i] : cursor[i] + n]
                cursor[i] += n
                return out
        raise ValueError("the sample has too few words for this set")

    def content_length() -> int:
        return int(min(max(rng.lognormvariate(4.5, 0.7), 20), 400))

    def edited(words: list[str], rate: float) -> list[str]:
        return [f"x{rng.randrange(10**6)}" if rng.random() < rate else w for w in words]

    def paragraphs(words: list[str]) -> list[str]:
        """The content as lines of 20-60 words, as a page's paragraphs are."""
        out, i = [], 0
        while i < len(words):
            n = rng.randint(20, 60)
            out.append(" ".join(words[i : i + n]))
            i += n
        return out

    out: list[Page] = []
    for s in range(sites):
        head = [" ".join(take(rng.randint(8, 16))) for _ in range(rng.randint(5, 12))]
        foot = [" ".join(take(rng.randint(8, 16))) for _ in range(rng.randint(5, 12))]

        def page(path: str, words: list[str], s: int = s, head: list[str] = head, foot: list[str] = foot) -> Page:
            return Page(f"https://www.site{s}.example/{path}", "\n".join([*head, *paragraphs(words), *foot]),
                        " ".join(words))

        contents = [take(content_length()) for _ in range(pages_per_site)]
        out += [page(f"p{k}", c) for k, c in enumerate(contents)]
        if s % 3 == 0:
            out.append(page("p0-copy", edited(contents[0], 0.03)))
        if s % 10 == 1:
            out += [page(f"p1-copy{k}", edited(contents[1], 0.02)) for k in range(cluster - 1)]
    for k in range(standalone):
        words = take(content_length() + 60)
        out.append(Page(f"https://host{k}.example/", " ".join(words), " ".join(words)))
    return out


def score(pages: list[Page], clusters: dict[int, int], threshold: float, shingles) -> tuple[float, float, int, int]:
    """(precision, recall, removed, should be removed) of `clusters` (page index -> cluster root) against
    the content truth; `shingles(text)` gives a text's shingle set."""
    sets = [set(shingles(p.content).tolist()) for p in pages]
    n = len(pages)
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    pairs = set()
    for i in range(n):
        for j in range(i + 1, n):
            a, b = sets[i], sets[j]
            if a and b and len(a & b) / len(a | b) >= threshold:
                pairs.add((i, j))
                parent[find(j)] = find(i)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    should = sum(len(g) - 1 for g in groups.values())
    removed = [i for i in range(n) if clusters[i] != i]
    members: dict[int, list[int]] = {}
    for i in range(n):
        members.setdefault(clusters[i], []).append(i)
    good = sum(any((min(i, j), max(i, j)) in pairs for j in members[clusters[i]] if j != i) for i in removed)
    found = sum(len(g) - len({clusters[i] for i in g}) for g in groups.values())  # merges inside true groups
    return good / max(len(removed), 1), found / max(should, 1), len(removed), should
