//! A parsed Prometheus text scrape, looked up by name and label subset.

/// One series of a scrape: its name, its labels, its value.
type Series = (String, Vec<(String, String)>, f64);

/// A parsed scrape: one entry per series, labels sorted as Prometheus writes them.
pub struct Scrape {
    pub text: String,
    series: Vec<Series>,
}

impl Scrape {
    /// `GET {base}/metrics`: a 200 in Prometheus' text format, parsed.
    pub async fn fetch(client: &reqwest::Client, base: &str) -> Scrape {
        let response = client.get(format!("{base}/metrics")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let content_type = response.headers()["content-type"].to_str().unwrap();
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{content_type}"
        );
        Scrape::parse(&response.text().await.unwrap())
    }

    pub fn parse(text: &str) -> Scrape {
        let series = text
            .lines()
            .filter(|line| !line.starts_with('#') && !line.is_empty())
            .map(|line| {
                let (series, value) = line.rsplit_once(' ').unwrap();
                let (name, labels) = match series.split_once('{') {
                    Some((name, labels)) => (name, labels.trim_end_matches('}')),
                    None => (series, ""),
                };
                let labels = labels
                    .split(',')
                    .filter(|pair| !pair.is_empty())
                    .map(|pair| {
                        let (key, value) = pair.split_once('=').unwrap();
                        (key.to_owned(), value.trim_matches('"').to_owned())
                    })
                    .collect();
                (name.to_owned(), labels, value.parse::<f64>().unwrap())
            })
            .collect();
        Scrape {
            text: text.to_owned(),
            series,
        }
    }

    /// The sum over the series of `name` whose labels include `labels`; `None` when none does.
    pub fn find(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let matching: Vec<f64> = self
            .series
            .iter()
            .filter(|(series, have, _)| {
                series == name
                    && labels
                        .iter()
                        .all(|(k, v)| have.iter().any(|(hk, hv)| hk == k && hv == v))
            })
            .map(|(_, _, value)| *value)
            .collect();
        (!matching.is_empty()).then(|| matching.iter().sum())
    }

    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.find(name, labels)
            .unwrap_or_else(|| panic!("no {name} {labels:?} in:\n{}", self.text))
    }

    /// Every series name in the scrape, and every family its `# TYPE` lines declare.
    pub fn names(&self) -> std::collections::BTreeSet<String> {
        let families = self
            .text
            .lines()
            .filter_map(|line| line.strip_prefix("# TYPE "))
            .filter_map(|line| line.split(' ').next());
        self.series
            .iter()
            .map(|(name, _, _)| name.as_str())
            .chain(families)
            .map(str::to_owned)
            .collect()
    }
}
