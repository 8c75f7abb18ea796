//! Parsing the XML bodies object stores return (ListObjectsV2 results, error documents, from
//! OSS and S3 alike) into a small element tree, matched by local name so namespaces and child
//! order do not matter.

use quick_xml::events::Event;
use quick_xml::Reader;

#[derive(Debug, Default, Clone)]
pub struct Element {
    pub name: String,
    pub text: String,
    pub children: Vec<Element>,
}

impl Element {
    pub fn child(&self, name: &str) -> Option<&Element> {
        self.children.iter().find(|c| c.name == name)
    }

    pub fn children_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Element> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    pub fn child_text(&self, name: &str) -> Option<&str> {
        self.child(name).map(|c| c.text.as_str())
    }
}

/// Parses a document into its root element. Errors name what was wrong, for messages.
pub fn parse(body: &[u8]) -> Result<Element, String> {
    let mut reader = Reader::from_reader(body);
    let mut stack: Vec<Element> = Vec::new();
    let mut buf = Vec::new();
    loop {
        match reader.read_event_into(&mut buf) {
            Ok(Event::Start(e)) => {
                let name = String::from_utf8_lossy(e.local_name().as_ref()).into_owned();
                stack.push(Element {
                    name,
                    ..Default::default()
                });
            }
            Ok(Event::Empty(e)) => {
                let el = Element {
                    name: String::from_utf8_lossy(e.local_name().as_ref()).into_owned(),
                    ..Default::default()
                };
                match stack.last_mut() {
                    Some(parent) => parent.children.push(el),
                    None => return Ok(el),
                }
            }
            Ok(Event::Text(t)) => {
                if let Some(top) = stack.last_mut() {
                    let text = t.unescape().map_err(|e| format!("bad XML text: {e}"))?;
                    top.text.push_str(&text);
                }
            }
            Ok(Event::CData(t)) => {
                if let Some(top) = stack.last_mut() {
                    top.text.push_str(&String::from_utf8_lossy(&t));
                }
            }
            Ok(Event::End(_)) => {
                let done = stack.pop().ok_or("unbalanced XML")?;
                match stack.last_mut() {
                    Some(parent) => parent.children.push(done),
                    None => return Ok(done),
                }
            }
            Ok(Event::Eof) => return Err("XML ended before its root element closed".into()),
            Ok(_) => {}
            Err(e) => return Err(format!("malformed XML: {e}")),
        }
        buf.clear();
    }
}

/// Escapes text for an XML element body (used by the emulator when it writes answers).
pub fn escape(s: &str) -> String {
    quick_xml::escape::escape(s).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_by_local_name_with_namespace() {
        let doc = br#"<?xml version="1.0"?><ListBucketResult xmlns="http://doc.oss-cn-hangzhou.aliyuncs.com"><Name>b</Name><Contents><Key>a%20b</Key></Contents><Contents><Key>c&amp;d</Key></Contents><Empty/></ListBucketResult>"#;
        let root = parse(doc).unwrap();
        assert_eq!(root.name, "ListBucketResult");
        assert_eq!(root.child_text("Name"), Some("b"));
        let keys: Vec<&str> = root
            .children_named("Contents")
            .map(|c| c.child_text("Key").unwrap())
            .collect();
        assert_eq!(keys, vec!["a%20b", "c&d"]);
        assert!(root.child("Empty").is_some());
    }

    #[test]
    fn truncated_document_is_an_error() {
        assert!(parse(b"<Error><Code>x</Code>").is_err());
    }
}
