//! The CSV import format of the asset register: RFC 4180 (comma-separated, `"` quotes fields,
//! `""` is a quote inside one, quoted fields may span lines), UTF-8, a header row naming the
//! columns in any order.
//!
//! Columns: `id`, `name`, `type` (required), `site`, `latitude`, `longitude`, `metadata` (a JSON
//! object). An empty cell is an absent value; blank lines are skipped. Every problem is reported
//! with the line it starts on, and a file with any problem imports nothing.

use proto::api::{AssetCreate, AssetType};

use super::validate;

/// Columns the importer knows.
pub const COLUMNS: [&str; 7] = ["id", "name", "type", "site", "latitude", "longitude", "metadata"];

/// A record: the line it starts on and its fields.
type Record = (usize, Vec<String>);

/// Splits text into records (RFC 4180).
fn records(text: &str) -> Result<Vec<Record>, String> {
    let mut out = Vec::new();
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut quoted = false; // inside quotes
    let mut was_quoted = false; // the current field was quoted (keep its spaces)
    let mut line = 1;
    let mut start = 1;
    let mut chars = text.chars().peekable();
    let finish_field = |field: &mut String, was_quoted: &mut bool, fields: &mut Vec<String>| {
        let f = std::mem::take(field);
        fields.push(if *was_quoted { f } else { f.trim().to_owned() });
        *was_quoted = false;
    };
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => quoted = false,
                '\n' => {
                    line += 1;
                    field.push('\n');
                }
                c => field.push(c),
            }
            continue;
        }
        match c {
            '"' if field.trim().is_empty() && !was_quoted => {
                field.clear();
                quoted = true;
                was_quoted = true;
            }
            '"' => {
                return Err(format!(
                    "line {line}: a quote inside an unquoted field (quote the whole field)"
                ));
            }
            ',' => finish_field(&mut field, &mut was_quoted, &mut fields),
            '\r' if chars.peek() == Some(&'\n') => {}
            '\n' => {
                finish_field(&mut field, &mut was_quoted, &mut fields);
                out.push((start, std::mem::take(&mut fields)));
                line += 1;
                start = line;
            }
            c if was_quoted => {
                if !c.is_whitespace() {
                    return Err(format!("line {line}: text after a closing quote"));
                }
            }
            c => field.push(c),
        }
    }
    if quoted {
        return Err(format!("line {start}: a quoted field is not closed"));
    }
    if !field.is_empty() || was_quoted || !fields.is_empty() {
        finish_field(&mut field, &mut was_quoted, &mut fields);
        out.push((start, fields));
    }
    // Blank lines are one empty field.
    out.retain(|(_, f)| !(f.len() == 1 && f[0].is_empty()));
    Ok(out)
}

fn number(column: &str, s: &str) -> Result<Option<f64>, String> {
    if s.is_empty() {
        return Ok(None);
    }
    s.parse::<f64>()
        .map(Some)
        .map_err(|_| format!("{column} '{s}' is not a number"))
}

/// Parses an import file into assets (with their line numbers), or every problem found, each
/// starting with `line N:`. Duplicate ids inside the file are problems too; ids already registered
/// are checked by the caller.
pub fn parse(text: &str) -> Result<Vec<(usize, AssetCreate)>, Vec<String>> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut rows = records(text).map_err(|e| vec![e])?.into_iter();
    let Some((header_line, header)) = rows.next() else {
        return Err(vec![
            "line 1: the file is empty (expected a header: id,name,type,...)".into(),
        ]);
    };
    let mut index = [None; COLUMNS.len()];
    let mut problems = Vec::new();
    for (i, name) in header.iter().enumerate() {
        let name = name.to_ascii_lowercase();
        match COLUMNS.iter().position(|c| *c == name) {
            Some(k) if index[k].is_some() => {
                problems.push(format!("line {header_line}: column '{name}' appears twice"));
            }
            Some(k) => index[k] = Some(i),
            None => problems.push(format!(
                "line {header_line}: unknown column '{name}' (known: {})",
                COLUMNS.join(", ")
            )),
        }
    }
    for required in ["id", "name", "type"] {
        let k = COLUMNS
            .iter()
            .position(|c| *c == required)
            .expect("required columns are known");
        if index[k].is_none() {
            problems.push(format!(
                "line {header_line}: the header has no '{required}' column"
            ));
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let mut assets = Vec::new();
    let mut seen = std::collections::HashMap::new();
    for (line, fields) in rows {
        if fields.len() != header.len() {
            problems.push(format!(
                "line {line}: {} fields, the header has {}",
                fields.len(),
                header.len()
            ));
            continue;
        }
        let cell = |name: &str| -> &str {
            let k = COLUMNS
                .iter()
                .position(|c| *c == name)
                .expect("cells are read by known column names");
            index[k].map_or("", |i| fields[i].as_str())
        };
        let parsed = (|| -> Result<AssetCreate, String> {
            let asset_type: AssetType = cell("type").parse()?;
            let metadata = match cell("metadata") {
                "" => serde_json::Map::new(),
                m => match serde_json::from_str::<serde_json::Value>(m) {
                    Ok(serde_json::Value::Object(o)) => o,
                    Ok(_) => return Err("metadata must be a JSON object".into()),
                    Err(e) => return Err(format!("metadata is not JSON: {e}")),
                },
            };
            let optional = |s: &str| (!s.is_empty()).then(|| s.to_owned());
            let asset = AssetCreate {
                id: cell("id").to_owned(),
                name: cell("name").to_owned(),
                asset_type,
                site: optional(cell("site")),
                latitude: number("latitude", cell("latitude"))?,
                longitude: number("longitude", cell("longitude"))?,
                metadata,
            };
            validate(&asset)?;
            Ok(asset)
        })();
        match parsed {
            Ok(asset) => {
                if let Some(first) = seen.insert(asset.id.clone(), line) {
                    problems.push(format!(
                        "line {line}: asset '{}' is already on line {first}",
                        asset.id
                    ));
                } else {
                    assets.push((line, asset));
                }
            }
            Err(e) => problems.push(format!("line {line}: {e}")),
        }
    }
    if problems.is_empty() {
        Ok(assets)
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_fields_hold_commas_quotes_and_newlines() {
        let text = "id,name,type,site,latitude,longitude,metadata\r\n\
                    P-1, Pole one ,pole,North,47.5,8.25,\"{\"\"height_m\"\": 12, \"\"material\"\": \"\"wood\"\"}\"\r\n\
                    \n\
                    T-2,\"Tower, two\",tower,,,,\"{\"\"a\"\":\n1}\"\n\
                    I-3,Insulator,insulator,South,,,";
        let assets = parse(text).unwrap();
        assert_eq!(assets.len(), 3);
        let (line, p) = &assets[0];
        assert_eq!(*line, 2);
        assert_eq!(p.name, "Pole one");
        assert_eq!((p.latitude, p.longitude), (Some(47.5), Some(8.25)));
        assert_eq!(p.metadata["height_m"], 12);
        assert_eq!(assets[1].0, 4);
        assert_eq!(assets[1].1.name, "Tower, two");
        assert_eq!(assets[1].1.metadata["a"], 1);
        assert_eq!(assets[1].1.site, None);
        assert_eq!(
            assets[2].0, 6,
            "line numbers count the lines inside quoted fields"
        );
    }

    #[test]
    fn columns_may_come_in_any_order_and_optional_ones_may_be_missing() {
        let assets = parse("type,id,name\npole,P-1,One\n").unwrap();
        assert_eq!(assets[0].1.asset_type, AssetType::Pole);
        assert_eq!(assets[0].1.id, "P-1");
    }

    #[test]
    fn every_bad_line_is_reported_with_its_number() {
        let text = "id,name,type,latitude,longitude,metadata\n\
                    P-1,One,pole,1,2,\n\
                    P-2,Two,poel,,,\n\
                    P-3,Three,pole,91,2,\n\
                    P-4,Four,pole,1,,\n\
                    P-1,Again,pole,,,\n\
                    P-6,Six,pole,,,[1]\n\
                    P-7,Seven,pole\n\
                    ../x,Eight,pole,,,\n\
                    P-9,Nine,pole,abc,1,\n";
        let problems = parse(text).unwrap_err();
        let expect = [
            ("line 3:", "unknown asset type 'poel'"),
            ("line 4:", "latitude"),
            ("line 5:", "both"),
            ("line 6:", "already on line 2"),
            ("line 7:", "JSON object"),
            ("line 8:", "3 fields"),
            ("line 9:", "asset id"),
            ("line 10:", "not a number"),
        ];
        assert_eq!(problems.len(), expect.len(), "{problems:#?}");
        for ((prefix, needle), p) in expect.iter().zip(&problems) {
            assert!(
                p.starts_with(prefix) && p.contains(needle),
                "{p} should be {prefix} ... {needle}"
            );
        }
    }

    #[test]
    fn bad_headers_and_broken_quoting_are_refused() {
        assert!(parse("").unwrap_err()[0].contains("empty"));
        assert!(parse("id,name\nP,p\n").unwrap_err()[0].contains("'type'"));
        assert!(parse("id,name,type,colour\n").unwrap_err()[0].contains("unknown column 'colour'"));
        assert!(parse("id,name,type,id\n").unwrap_err()[0].contains("twice"));
        let e = parse("id,name,type\nP-1,\"open,pole\n").unwrap_err();
        assert!(e[0].contains("line 2") && e[0].contains("not closed"), "{e:?}");
        let e = parse("id,name,type\nP-1,a\"b,pole\n").unwrap_err();
        assert!(e[0].contains("line 2") && e[0].contains("quote"), "{e:?}");
        let e = parse("id,name,type\nP-1,\"a\"b,pole\n").unwrap_err();
        assert!(e[0].contains("after a closing quote"), "{e:?}");
    }
}
