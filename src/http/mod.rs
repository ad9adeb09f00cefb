//! The controller's HTTP side (see DESIGN 10).

pub mod dag_svg;
