//! MQTT routes: which topics are subscribed, and how a topic names the database, table
//! and tags of the rows its payloads carry.
//!
//! ```toml
//! [[mqtt.routes]]
//! filter = "building/+/+/+"                       # subscribed with QoS 1
//! topic  = "building/{building}/{room}/{table}"  # {table} → table, {db} → database, others → tags
//! format = "json"                                 # json | senml | line | value | auto
//! db     = "house"
//! ```
//!
//! Without routes, [`Route::default_route`] takes every topic (`#`) into table `mqtt` of
//! database `default`, the topic kept as tag `topic`, the payload format guessed (`auto`).

use serde::Deserialize;

use crate::decode::Format;

/// A route as written in the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    pub filter: String,
    #[serde(default)]
    pub topic: Option<String>,
    #[serde(default = "default_format")]
    pub format: String,
    #[serde(default)]
    pub db: Option<String>,
    #[serde(default)]
    pub table: Option<String>,
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// Keep the whole topic as tag `topic` (what the default route does).
    #[serde(default)]
    pub topic_tag: bool,
}

fn default_format() -> String {
    "auto".into()
}

fn default_qos() -> u8 {
    1
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    /// A literal level that must match.
    Literal(String),
    /// `{name}` over a `+` level.
    Capture(Capture),
    /// `{name}` over the `#` level: the rest of the topic, joined by `/`.
    Rest(Capture),
    /// A wildcard level the template does not name.
    Any,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Capture {
    Db,
    Table,
    Tag(String),
}

/// A validated route.
#[derive(Debug, Clone)]
pub struct Route {
    /// The subscription filter, as given (may carry a `$share/<group>/` prefix).
    pub filter: String,
    /// Levels of the filter without a shared-subscription prefix.
    levels: Vec<String>,
    parts: Vec<Part>,
    pub format: Format,
    pub db: String,
    table: Option<String>,
    pub qos: u8,
    /// Keep the whole topic as tag `topic` (the default route does).
    topic_tag: bool,
}

/// Where a message's rows go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub db: String,
    pub table: String,
    pub tags: Vec<(String, String)>,
}

/// Check an MQTT topic filter (MQTT 3.1.1 §4.7, MQTT 5 §4.8.2 for `$share`).
pub fn validate_filter(filter: &str) -> Result<Vec<String>, String> {
    if filter.is_empty() || filter.len() > 65_535 || filter.contains('\0') {
        return Err(format!(
            "topic filter {filter:?} is empty, too long or contains NUL"
        ));
    }
    let body = match filter.strip_prefix("$share/") {
        Some(rest) => match rest.split_once('/') {
            Some((group, f))
                if !group.is_empty() && !group.contains(['+', '#']) && !f.is_empty() =>
            {
                f
            }
            _ => {
                return Err(format!(
                    "shared subscription {filter:?} must be $share/<group>/<filter>"
                ));
            }
        },
        None => filter,
    };
    let levels: Vec<String> = body.split('/').map(str::to_string).collect();
    for (i, l) in levels.iter().enumerate() {
        if l.contains('#') && (l != "#" || i != levels.len() - 1) {
            return Err(format!(
                "topic filter {filter:?}: '#' must be the whole last level"
            ));
        }
        if l.contains('+') && l != "+" {
            return Err(format!(
                "topic filter {filter:?}: '+' must be a whole level"
            ));
        }
    }
    Ok(levels)
}

impl Route {
    /// The route used when no route is configured.
    pub fn default_route() -> Route {
        Route {
            filter: "#".into(),
            levels: vec!["#".into()],
            parts: vec![Part::Any],
            format: Format::Auto,
            db: "default".into(),
            table: Some("mqtt".into()),
            qos: 1,
            topic_tag: true,
        }
    }

    /// Validate a configured route.
    pub fn new(c: &RouteConfig) -> Result<Route, String> {
        let levels = validate_filter(&c.filter)?;
        let format = Format::parse(&c.format).ok_or_else(|| {
            format!(
                "route {:?}: unknown format {:?} (json, senml, line, value, auto)",
                c.filter, c.format
            )
        })?;
        if c.qos > 1 {
            return Err(format!("route {:?}: qos must be 0 or 1", c.filter));
        }
        let db = c.db.clone().unwrap_or_else(|| "default".into());
        talo_engine::model::validate_db_name(&db)
            .map_err(|e| format!("route {:?}: {e}", c.filter))?;
        if let Some(t) = &c.table {
            talo_engine::model::validate_table_name(t)
                .map_err(|e| format!("route {:?}: {e}", c.filter))?;
        }
        let parts = match &c.topic {
            None => levels
                .iter()
                .map(|l| {
                    if l == "+" || l == "#" {
                        Part::Any
                    } else {
                        Part::Literal(l.clone())
                    }
                })
                .collect(),
            Some(template) => Self::parse_template(&c.filter, &levels, template)?,
        };
        let names_table = parts.iter().any(|p| {
            matches!(
                p,
                Part::Capture(Capture::Table) | Part::Rest(Capture::Table)
            )
        });
        if !names_table && c.table.is_none() {
            return Err(format!(
                "route {:?}: name the table with {{table}} in topic or with table = \"...\"",
                c.filter
            ));
        }
        Ok(Route {
            filter: c.filter.clone(),
            levels,
            parts,
            format,
            db,
            table: c.table.clone(),
            qos: c.qos,
            topic_tag: c.topic_tag,
        })
    }

    fn parse_template(
        filter: &str,
        levels: &[String],
        template: &str,
    ) -> Result<Vec<Part>, String> {
        let t: Vec<&str> = template.split('/').collect();
        let has_rest = levels.last().is_some_and(|l| l == "#");
        if t.len() != levels.len() {
            return Err(format!(
                "route {filter:?}: topic template {template:?} has {} levels, the filter {}",
                t.len(),
                levels.len()
            ));
        }
        let mut seen = Vec::new();
        let mut parts = Vec::new();
        for (i, (tl, fl)) in t.iter().zip(levels).enumerate() {
            let capture = tl.strip_prefix('{').and_then(|x| x.strip_suffix('}'));
            match capture {
                Some(name) => {
                    if fl != "+" && fl != "#" {
                        return Err(format!(
                            "route {filter:?}: level {} of the template names {{{name}}} but the filter level is the literal {fl:?}",
                            i + 1
                        ));
                    }
                    if seen.contains(&name) {
                        return Err(format!("route {filter:?}: {{{name}}} appears twice"));
                    }
                    seen.push(name);
                    let cap = match name {
                        "table" => Capture::Table,
                        "db" => Capture::Db,
                        tag => {
                            talo_engine::model::validate_column_name(tag)
                                .map_err(|e| format!("route {filter:?}: {e}"))?;
                            Capture::Tag(tag.to_string())
                        }
                    };
                    parts.push(if fl == "#" {
                        Part::Rest(cap)
                    } else {
                        Part::Capture(cap)
                    });
                }
                None if fl == "+" || (fl == "#" && has_rest) => {
                    if *tl != fl {
                        return Err(format!(
                            "route {filter:?}: template level {tl:?} must be {{name}} or {fl:?}"
                        ));
                    }
                    parts.push(Part::Any);
                }
                None => {
                    if tl != fl {
                        return Err(format!(
                            "route {filter:?}: template level {tl:?} does not match filter level {fl:?}"
                        ));
                    }
                    parts.push(Part::Literal(fl.clone()));
                }
            }
        }
        Ok(parts)
    }

    /// Where a message on `topic` goes, if this route takes it.
    pub fn resolve(&self, topic: &str) -> Option<Resolved> {
        let levels: Vec<&str> = topic.split('/').collect();
        // wildcards at the first level do not match topics starting with '$'
        if topic.starts_with('$')
            && matches!(self.levels.first().map(String::as_str), Some("+" | "#"))
        {
            return None;
        }
        let mut db = self.db.clone();
        let mut table = self.table.clone();
        let mut tags = Vec::new();
        let mut apply = |cap: &Capture, value: String| match cap {
            Capture::Db => db = value,
            Capture::Table => table = Some(value),
            Capture::Tag(name) => tags.push((name.clone(), value)),
        };
        for (i, (fl, part)) in self.levels.iter().zip(&self.parts).enumerate() {
            if fl == "#" {
                let rest = levels.get(i..).map(|r| r.join("/")).unwrap_or_default();
                if let Part::Rest(cap) = part {
                    if rest.is_empty() {
                        return None;
                    }
                    apply(cap, rest);
                }
                return self.finish(topic, db, table, tags);
            }
            let level = levels.get(i)?;
            match part {
                Part::Literal(l) if l != level => return None,
                Part::Capture(cap) => {
                    if level.is_empty() {
                        return None;
                    }
                    apply(cap, level.to_string());
                }
                _ => {}
            }
        }
        if levels.len() != self.levels.len() {
            return None;
        }
        self.finish(topic, db, table, tags)
    }

    fn finish(
        &self,
        topic: &str,
        db: String,
        table: Option<String>,
        mut tags: Vec<(String, String)>,
    ) -> Option<Resolved> {
        if self.topic_tag {
            tags.push(("topic".into(), topic.to_string()));
        }
        Some(Resolved {
            db,
            table: table?,
            tags,
        })
    }
}

/// Build and check every route; the default route when none is configured.
pub fn build_routes(configs: &[RouteConfig]) -> Result<Vec<Route>, String> {
    if configs.is_empty() {
        return Ok(vec![Route::default_route()]);
    }
    configs.iter().map(Route::new).collect()
}

/// The first route that takes `topic`.
pub fn route_for<'a>(routes: &'a [Route], topic: &str) -> Option<(&'a Route, Resolved)> {
    routes
        .iter()
        .find_map(|r| r.resolve(topic).map(|res| (r, res)))
}

/// [`route_for`] with the index of the route.
pub fn route_index(routes: &[Route], topic: &str) -> Option<(usize, Resolved)> {
    routes
        .iter()
        .enumerate()
        .find_map(|(i, r)| r.resolve(topic).map(|res| (i, res)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(filter: &str, topic: Option<&str>) -> RouteConfig {
        RouteConfig {
            filter: filter.into(),
            topic: topic.map(str::to_string),
            format: "json".into(),
            db: Some("house".into()),
            table: None,
            qos: 1,
            topic_tag: false,
        }
    }

    #[test]
    fn template_names_table_db_and_tags() {
        let r = Route::new(&cfg(
            "building/+/+/+",
            Some("building/{building}/{room}/{table}"),
        ))
        .unwrap();
        assert_eq!(
            r.resolve("building/b1/kitchen/env"),
            Some(Resolved {
                db: "house".into(),
                table: "env".into(),
                tags: vec![
                    ("building".into(), "b1".into()),
                    ("room".into(), "kitchen".into())
                ]
            })
        );
        assert_eq!(r.resolve("building/b1/kitchen"), None);
        assert_eq!(r.resolve("building/b1/kitchen/env/x"), None);
        assert_eq!(r.resolve("house/b1/kitchen/env"), None);
        assert_eq!(r.resolve("building//kitchen/env"), None, "empty level");
        let r = Route::new(&cfg(
            "$share/talo/+/sensors/#",
            Some("{db}/sensors/{table}"),
        ))
        .unwrap();
        let res = r.resolve("toe/sensors/co2/extra").unwrap();
        assert_eq!((res.db.as_str(), res.table.as_str()), ("toe", "co2/extra"));
    }

    #[test]
    fn default_route_takes_everything() {
        let routes = build_routes(&[]).unwrap();
        let (_, res) = route_for(&routes, "a/b/c").unwrap();
        assert_eq!(
            res,
            Resolved {
                db: "default".into(),
                table: "mqtt".into(),
                tags: vec![("topic".into(), "a/b/c".into())]
            }
        );
        assert!(route_for(&routes, "$SYS/broker/load").is_none());
    }

    #[test]
    fn bad_routes_are_refused_with_reasons() {
        let bad = [
            (cfg("a/+/b", Some("a/{x}")), "levels"),
            (cfg("a/b+/c", None), "whole level"),
            (cfg("a/#/c", None), "last level"),
            (cfg("a/+", Some("a/{table}/x")), "levels"),
            (cfg("a/b", Some("a/{table}")), "literal"),
            (cfg("a/+/+", Some("a/{table}/{table}")), "twice"),
            (cfg("a/+", Some("a/{time}")), "reserved"),
            (cfg("a/+", Some("a/{room}")), "name the table"),
            (cfg("", None), "empty"),
            (cfg("$share//x", None), "$share"),
        ];
        for (c, why) in bad {
            let e = Route::new(&c).unwrap_err();
            assert!(e.contains(why), "{:?}: {e}", c.filter);
        }
        let mut c = cfg("a/+", Some("a/{table}"));
        c.format = "xml".into();
        assert!(Route::new(&c).unwrap_err().contains("unknown format"));
        c.format = "json".into();
        c.qos = 2;
        assert!(Route::new(&c).unwrap_err().contains("qos"));
        c.qos = 1;
        c.db = Some("../etc".into());
        assert!(Route::new(&c).is_err());
        // a fixed table instead of {table}
        let mut c = cfg("sensors/+", Some("sensors/{room}"));
        c.table = Some("env".into());
        assert_eq!(
            Route::new(&c).unwrap().resolve("sensors/r1").unwrap().table,
            "env"
        );
    }
}
