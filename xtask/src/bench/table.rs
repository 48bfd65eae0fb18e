//! The one writer of the report's tables: column headers and rows in, a Markdown table out.
//! A table of one row per mode (or per program, per backend) is described by its columns:
//! each a header and how an item's cell reads.

use std::fmt;

/// A Markdown table: a header row, the separator, then one line per row.
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

/// A column of a [`Table::of`] table: its header and how the cell of an item reads.
pub struct Column<'a, T> {
    header: String,
    cell: Box<dyn Fn(T) -> String + 'a>,
}

impl<'a, T> Column<'a, T> {
    pub fn new(header: impl Into<String>, cell: impl Fn(T) -> String + 'a) -> Self {
        Self {
            header: header.into(),
            cell: Box::new(cell),
        }
    }
}

impl Table {
    pub fn new<S: Into<String>>(header: impl IntoIterator<Item = S>) -> Self {
        Self {
            header: header.into_iter().map(Into::into).collect(),
            rows: Vec::new(),
        }
    }

    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) {
        self.rows.push(cells.into_iter().map(Into::into).collect());
    }

    /// One row per item: the item itself under `first`, then its cell in each column.
    pub fn of<T: Copy + fmt::Display>(first: &str, items: &[T], columns: &[Column<'_, T>]) -> Self {
        let mut table = Self::new(
            std::iter::once(first.to_owned()).chain(columns.iter().map(|c| c.header.clone())),
        );
        for &item in items {
            table.row(
                std::iter::once(item.to_string()).chain(columns.iter().map(|c| (c.cell)(item))),
            );
        }
        table
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let line =
            |f: &mut fmt::Formatter<'_>, cells: &[String]| writeln!(f, "| {} |", cells.join(" | "));
        line(f, &self.header)?;
        writeln!(f, "|{}", "---|".repeat(self.header.len()))?;
        for row in &self.rows {
            line(f, row)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_markdown_rows_under_their_headers() {
        let columns = [
            Column::new("double", |n: u32| (2 * n).to_string()),
            Column::new(
                "note",
                |n: u32| if n == 1 { String::new() } else { "many".into() },
            ),
        ];
        let table = Table::of("n", &[1, 3], &columns);
        assert_eq!(
            table.to_string(),
            "| n | double | note |\n|---|---|---|\n| 1 | 2 |  |\n| 3 | 6 | many |\n"
        );
        let mut plain = Table::new(["a", "b"]);
        plain.row(["x", "y"]);
        assert_eq!(plain.to_string(), "| a | b |\n|---|---|\n| x | y |\n");
    }
}
