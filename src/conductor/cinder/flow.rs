//! The attach and detach flow of one Cinder volume, as a pure function of its row and of what
//! the conductor sees of the node: which call comes next. The executor in `super` makes the
//! call and writes the row; every step is safe to repeat after a crash.

use crate::conductor::store::CinderRow;
use crate::protocol::VolumeState;
use crate::protocol::cinder::CinderPhase;

/// What the flow does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Create the Cinder attachment for the node's connector (or adopt the one a crashed
    /// conductor made), then assign the target.
    CreateAttachment,
    /// The agent has the device: `os-complete`, and Cinder shows the volume `in-use`.
    Complete,
    /// Delete the target: the agent detaches the volume.
    Unassign,
    /// The agent let the volume go: delete the Cinder attachment (Cinder unexports it).
    DeleteAttachment,
    /// Nothing is left in Cinder or on the node: forget the volume.
    Forget,
    /// The target was deleted by hand while the volume was wanted: the flow stops there.
    TargetLost,
    /// Nothing to do until the node or the operator does something.
    Wait,
}

/// What the conductor sees of the volume's target and its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Seen {
    pub target_exists: bool,
    /// The state the node's last report gives the target; `None` when it does not list it.
    pub agent: Option<VolumeState>,
}

pub(crate) fn next_step(row: &CinderRow, seen: Seen) -> Step {
    if !row.want_attached {
        return match () {
            _ if seen.target_exists => Step::Unassign,
            // The agent still has it (detaching, or blocked by a user of the device): the
            // attachment stays, so that Cinder never unexports a LUN under a mounted filesystem.
            _ if seen.agent.is_some() => Step::Wait,
            // Creating with no id: a crash may have come after Cinder made it; look for it.
            _ if row.attachment_id.is_some() || row.phase == CinderPhase::Creating => {
                Step::DeleteAttachment
            }
            _ => Step::Forget,
        };
    }
    match row.phase {
        CinderPhase::Creating => Step::CreateAttachment,
        CinderPhase::Attaching | CinderPhase::Completing | CinderPhase::Attached
            if !seen.target_exists =>
        {
            Step::TargetLost
        }
        CinderPhase::Attaching | CinderPhase::Completing => match seen.agent {
            Some(VolumeState::Attached | VolumeState::Mounted) => Step::Complete,
            _ => Step::Wait,
        },
        CinderPhase::Attached
        | CinderPhase::Detaching
        | CinderPhase::Deleting
        | CinderPhase::Failed => Step::Wait,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    const PHASES: [CinderPhase; 7] = [
        CinderPhase::Creating,
        CinderPhase::Attaching,
        CinderPhase::Completing,
        CinderPhase::Attached,
        CinderPhase::Detaching,
        CinderPhase::Deleting,
        CinderPhase::Failed,
    ];

    fn row(want_attached: bool, phase: CinderPhase, attachment: bool) -> CinderRow {
        let mut row = CinderRow::new(Uuid::nil(), "vol".into(), None, false, None, None);
        row.want_attached = want_attached;
        row.phase = phase;
        row.attachment_id = attachment.then(|| "att".to_string());
        row
    }

    /// Every combination of row and view, with the step the flow takes.
    fn every_case() -> Vec<(CinderRow, Seen, Step)> {
        let agents = std::iter::once(None).chain(VolumeState::ALL.into_iter().map(Some));
        let mut cases = Vec::new();
        for want in [true, false] {
            for phase in PHASES {
                for attachment in [true, false] {
                    for target_exists in [true, false] {
                        for agent in agents.clone() {
                            let r = row(want, phase, attachment);
                            let seen = Seen {
                                target_exists,
                                agent,
                            };
                            let step = next_step(&r, seen);
                            cases.push((r, seen, step));
                        }
                    }
                }
            }
        }
        cases
    }

    #[test]
    fn cinder_is_told_in_use_only_once_the_node_has_the_device() {
        for (row, seen, step) in every_case() {
            if step == Step::Complete {
                assert!(row.want_attached, "{row:?} {seen:?}");
                assert!(seen.target_exists, "{row:?} {seen:?}");
                assert!(
                    matches!(
                        seen.agent,
                        Some(VolumeState::Attached | VolumeState::Mounted)
                    ),
                    "{row:?} {seen:?}"
                );
            }
        }
    }

    #[test]
    fn the_attachment_goes_only_after_the_node_let_the_volume_go() {
        for (row, seen, step) in every_case() {
            if matches!(step, Step::DeleteAttachment | Step::Forget) {
                assert!(!row.want_attached, "{row:?} {seen:?}");
                assert!(!seen.target_exists, "{row:?} {seen:?}");
                assert_eq!(seen.agent, None, "{row:?} {seen:?}");
            }
        }
    }

    #[test]
    fn nothing_is_forgotten_that_may_still_be_in_cinder() {
        for (row, seen, step) in every_case() {
            if step == Step::Forget {
                assert!(row.attachment_id.is_none(), "{row:?} {seen:?}");
                assert_ne!(row.phase, CinderPhase::Creating, "{row:?} {seen:?}");
            }
        }
    }

    #[test]
    fn a_wanted_volume_is_never_detached_and_an_unwanted_one_always_is() {
        for (row, seen, step) in every_case() {
            if row.want_attached {
                assert!(
                    !matches!(step, Step::Unassign | Step::DeleteAttachment | Step::Forget),
                    "{row:?} {seen:?} {step:?}"
                );
            } else {
                assert!(
                    !matches!(
                        step,
                        Step::CreateAttachment | Step::Complete | Step::TargetLost
                    ),
                    "{row:?} {seen:?} {step:?}"
                );
                if seen.target_exists {
                    assert_eq!(step, Step::Unassign, "{row:?} {seen:?}");
                }
            }
        }
    }

    #[test]
    fn every_detach_ends() {
        // Following the steps as the executor applies them, any unwanted volume ends forgotten
        // once its agent stops reporting it.
        for (mut row, mut seen, _) in every_case()
            .into_iter()
            .filter(|(r, _, _)| !r.want_attached)
        {
            for _ in 0..6 {
                match next_step(&row, seen) {
                    Step::Unassign => {
                        seen.target_exists = false;
                        row.enter(CinderPhase::Detaching);
                    }
                    Step::Wait => seen.agent = None,
                    Step::DeleteAttachment => {
                        row.attachment_id = None;
                        row.enter(CinderPhase::Deleting);
                    }
                    Step::Forget => break,
                    other => panic!("{other:?} for an unwanted volume"),
                }
            }
            assert_eq!(next_step(&row, seen), Step::Forget, "{row:?}");
        }
    }

    #[test]
    fn an_attach_goes_from_creating_to_attached() {
        let mut row = row(true, CinderPhase::Creating, false);
        let none = Seen {
            target_exists: false,
            agent: None,
        };
        assert_eq!(next_step(&row, none), Step::CreateAttachment);
        row.attachment_id = Some("att".into());
        row.enter(CinderPhase::Attaching);
        let assigned = Seen {
            target_exists: true,
            agent: Some(VolumeState::Attaching),
        };
        assert_eq!(next_step(&row, assigned), Step::Wait);
        let mounted = Seen {
            target_exists: true,
            agent: Some(VolumeState::Mounted),
        };
        assert_eq!(next_step(&row, mounted), Step::Complete);
        row.enter(CinderPhase::Attached);
        assert_eq!(next_step(&row, mounted), Step::Wait);
        assert_eq!(next_step(&row, none), Step::TargetLost);
    }
}
