//! The element an `on-element` call reads, lent to the plugin for the length of that call.
//!
//! A plugin reads an element's tag and attributes through host calls while its callback runs.
//! Copying every attribute of every subscribed element up front, whether the plugin reads them
//! or not, was about a tenth of what a callback cost (the `element-callbacks` line of the
//! runtime micro-benchmark: 2.49 → 2.24 µs); so the host functions read the rewriter's element
//! where it lies, through a pointer that is only followed while the call it was lent to runs.
//!
//! That rule is kept by the shape of the API and a loan number rather than by callers' care:
//! [`Lending::with_lent`] is the only way to lend, and the loan ends when it returns (also on
//! unwinding, by a guard's drop); [`LentElement::get`] follows the pointer only while its loan
//! is the current one. An entry a cancelled call left in the resource table reads nothing
//! afterwards.

use std::ptr::NonNull;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// What a plugin may read of an element while its `on-element` call runs.
pub trait ElementView {
    /// Tag name, lower case.
    fn tag(&self) -> String;
    /// An attribute's value by name (ASCII case-insensitive), as written in the page.
    fn attribute(&self, name: &str) -> Option<String>;
    /// All attributes in document order, names lower case.
    fn attributes(&self) -> Vec<(String, String)>;
}

/// One store's loans: the current one's number (0: none) and the last number given.
#[derive(Default)]
struct Loans {
    current: AtomicU64,
    issued: AtomicU64,
}

/// Lends elements to one store's calls, one at a time.
#[derive(Default)]
pub(crate) struct Lending(Arc<Loans>);

impl Lending {
    /// Runs `call` with `element` lent to it: the [`LentElement`] it is given reads the
    /// element until `call` returns, and nothing after.
    pub(crate) fn with_lent<R>(
        &self,
        element: &dyn ElementView,
        call: impl FnOnce(LentElement) -> R,
    ) -> R {
        let number = self.0.issued.fetch_add(1, Ordering::Relaxed) + 1;
        self.0.current.store(number, Ordering::Relaxed);
        // Ends the loan however `call` ends, while `element` is still borrowed.
        let _loan = Loan {
            loans: &self.0,
            number,
        };
        call(LentElement {
            element: erase(element),
            number,
            loans: self.0.clone(),
        })
    }
}

/// An element lent to a call; readable while that call runs.
pub(crate) struct LentElement {
    element: NonNull<dyn ElementView + 'static>,
    number: u64,
    loans: Arc<Loans>,
}

#[expect(
    unsafe_code,
    reason = "the resource table needs Send; see the SAFETY note"
)]
// SAFETY: the pointer is followed only by `get`, and only while this value's loan is current,
// that is inside `with_lent`, on the thread that called it: its one caller,
// `Instance::on_element`, holds the instance (its store included) by `&mut` for the whole
// synchronous call, so the store (and this value in its table) cannot be on another thread
// while the pointer is followed.
unsafe impl Send for LentElement {}

impl LentElement {
    /// The element, while its call runs; `None` once `with_lent` has returned.
    pub(crate) fn get(&self) -> Option<&dyn ElementView> {
        if self.loans.current.load(Ordering::Relaxed) != self.number {
            return None;
        }
        #[expect(
            unsafe_code,
            reason = "following the lent pointer; see the SAFETY note"
        )]
        // SAFETY: the loan is current, so `with_lent` has not returned, so the `&dyn
        // ElementView` it was given is still borrowed and alive; nothing mutates the element
        // meanwhile (its owner lent only a shared borrow). Host functions use the reference
        // before they return to the guest, inside the call.
        Some(unsafe { self.element.as_ref() })
    }
}

/// Keeps a loan current; dropping it ends the loan.
struct Loan<'l> {
    loans: &'l Loans,
    number: u64,
}

impl Drop for Loan<'_> {
    fn drop(&mut self) {
        // Only its own loan: a nested one (there are none today) must not end an outer one.
        let _ = self.loans.current.compare_exchange(
            self.number,
            0,
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }
}

/// The element's pointer with its borrow's lifetime erased; the loan stands in for it.
#[expect(
    unsafe_code,
    reason = "erasing the lent element's lifetime; see the SAFETY note"
)]
fn erase<'e>(element: &'e (dyn ElementView + 'e)) -> NonNull<dyn ElementView + 'static> {
    let ptr: NonNull<dyn ElementView + 'e> = NonNull::from(element);
    // SAFETY: only the trait object's lifetime bound changes (same layout and vtable); the
    // pointer is followed only while the loan made with it in `with_lent` is current, within
    // `'e`.
    unsafe {
        std::mem::transmute::<NonNull<dyn ElementView + 'e>, NonNull<dyn ElementView + 'static>>(
            ptr,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Link(String);

    impl ElementView for Link {
        fn tag(&self) -> String {
            "a".into()
        }
        fn attribute(&self, name: &str) -> Option<String> {
            name.eq_ignore_ascii_case("href").then(|| self.0.clone())
        }
        fn attributes(&self) -> Vec<(String, String)> {
            vec![("href".into(), self.0.clone())]
        }
    }

    #[test]
    fn a_lent_element_reads_only_while_its_call_lasts() {
        let lending = Lending::default();
        let first = Link("/one".into());
        let kept = lending.with_lent(&first, |lent| {
            assert_eq!(
                lent.get().and_then(|e| e.attribute("HREF")),
                Some("/one".into())
            );
            lent
        });
        assert!(kept.get().is_none(), "read after its call ended");
        // A later loan does not revive an earlier element.
        let second = Link("/two".into());
        lending.with_lent(&second, |now| {
            assert!(kept.get().is_none());
            assert_eq!(now.get().map(|e| e.tag()), Some("a".into()));
        });
        // Nor does a call that panicked leave its loan open.
        let third = Link("/three".into());
        let escaped = std::sync::Mutex::new(None);
        let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            lending.with_lent(&third, |lent| {
                *escaped.lock().unwrap_or_else(|e| e.into_inner()) = Some(lent);
                panic!("a host bug mid-call");
            })
        }));
        assert!(unwound.is_err());
        let escaped = escaped
            .into_inner()
            .unwrap_or_else(|e| e.into_inner())
            .expect("the call kept its element");
        assert!(escaped.get().is_none());
    }
}
