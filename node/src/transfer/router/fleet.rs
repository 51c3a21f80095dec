//! A fleet member's watch over the others: which members it waits for, whether their
//! copies grow, and, once one is lost, who fetches the pieces it owed.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use ferry_protocol::NodeId;
use ferry_protocol::peer_cache::FleetMember;
use ferry_protocol::transfer::Piece;

use super::{
    CopyView, FLEET_PATIENCE, FLEET_SAFETY, MemberState, PieceRouter, WATCH_EVERY, new_owner,
};

/// What a fleet member knows of the others: when each one's copy last grew, which
/// nodes miss pings, which members it took for lost, and who fetches the pieces of
/// the lost ones.
#[derive(Default)]
pub(super) struct FleetWatch {
    /// Chunks each member's copy held at the last check, and when it last grew.
    pub(super) grown: HashMap<u32, (usize, Instant)>,
    /// Nodes that miss pings (told by the shell's fleet watcher).
    pub(super) unreachable: BTreeSet<NodeId>,
    /// Members taken for lost, for good.
    pub(super) lost: BTreeSet<u32>,
    /// The members waited for, as the view showed them at its last position.
    pub(super) members: Vec<MemberState>,
    /// Before this, no member waited for can be lost (its copy grew less than
    /// [`FLEET_PATIENCE`] ago): checks wait until then or the view's next position.
    pub(super) calm_until: Option<Instant>,
    /// When members' growth was last looked at (at most every [`WATCH_EVERY`]).
    pub(super) checked: Option<Instant>,
    /// The members waited for at that look: only they are judged.
    pub(super) watched: BTreeSet<u32>,
    /// Pieces of lost members given to another member: piece index → member.
    pub(super) owner: HashMap<u32, u32>,
}

/// What a fleet member sees of another at a check.
#[derive(Clone, Copy, Debug)]
pub(crate) struct MemberView {
    /// Since its copy last grew (or since the download started).
    pub(crate) since_growth: Duration,
    /// Its node misses pings.
    pub(crate) unreachable: bool,
    /// Its job does not run (error, transient error, suspended, cancelled, gone).
    pub(crate) stopped: bool,
}

impl MemberView {
    /// Whether its pieces are to be divided among the others: it is dead or stopped
    /// and has not grown for [`FLEET_PATIENCE`], or has not grown for [`FLEET_SAFETY`].
    /// A slow origin makes no member lost: its node answers, its job runs.
    pub(crate) fn lost(self) -> bool {
        self.since_growth >= FLEET_SAFETY
            || (self.since_growth >= FLEET_PATIENCE && (self.unreachable || self.stopped))
    }
}

impl PieceRouter {
    /// Moves waiting pieces to peers once a copy holds them (checked when the view
    /// moved). A fleet member whose pieces wait is taken for lost when its
    /// [view](MemberView::lost) says so: its waiting pieces are divided among the
    /// members not lost ([`new_owner`]), this member fetching its part from the origin.
    /// Members that see the same members lost divide alike.
    pub(super) fn route(&mut self, view: &impl CopyView, now: Instant) {
        if !self.uses_copies {
            return;
        }
        let Some(fleet) = self.fleet.filter(|f| f.members > 0) else { return };
        if self.waiting.is_empty() {
            return;
        }
        let position = view.position();
        if self.seen != Some(position) {
            self.seen = Some(position);
            let (now_held, still): (Vec<Piece>, Vec<Piece>) = std::mem::take(&mut self.waiting)
                .into_iter()
                .partition(|p| view.holder_count(p) > 0);
            self.peers.extend(now_held);
            self.waiting = still;
            if self.watch.checked.is_some_and(|at| now >= at + WATCH_EVERY) {
                self.watch.checked = None;
            }
        }
        if self.watch.checked.is_none() {
            self.watch.checked = Some(now);
            self.watch_growth(view, fleet, now);
        }
        if self.watch.calm_until.is_some_and(|calm| now < calm) {
            return;
        }
        let watch = &mut self.watch;
        let owner = |watch: &FleetWatch, piece: &Piece| {
            watch.owner.get(&piece.index).copied().unwrap_or(piece.index % fleet.members)
        };
        let waited_for: BTreeSet<u32> = self.waiting.iter().map(|p| owner(watch, p)).collect();
        let newly_lost: Vec<u32> = waited_for
            .into_iter()
            .filter(|m| *m != fleet.member && !watch.lost.contains(m))
            // A member waited for since the last look is judged after the next.
            .filter(|m| watch.watched.contains(m))
            .filter(|m| {
                let job = watch.members.iter().find(|j| j.member == *m);
                let since_growth = watch
                    .grown
                    .get(m)
                    .map_or(Duration::ZERO, |g| now.saturating_duration_since(g.1));
                let view = MemberView {
                    since_growth,
                    unreachable: job.is_none_or(|j| watch.unreachable.contains(&j.node)),
                    stopped: job.is_none_or(|j| j.stopped),
                };
                view.lost()
            })
            .collect();
        if newly_lost.is_empty() {
            return;
        }
        watch.lost.extend(&newly_lost);
        // Those inheriting the pieces are looked at on the next ask.
        watch.calm_until = None;
        watch.checked = None;
        let mut mine = Vec::new();
        for piece in std::mem::take(&mut self.waiting) {
            if !watch.lost.contains(&owner(watch, &piece)) {
                self.waiting.push(piece);
                continue;
            }
            match new_owner(fleet.members, &watch.lost, piece.index) {
                Some(member) if member != fleet.member => {
                    watch.owner.insert(piece.index, member);
                    self.waiting.push(piece);
                }
                _ => mine.push(piece),
            }
        }
        tracing::info!(lost = ?newly_lost, mine = mine.len(), "fleet members lost; fetching a part of their share");
        self.origin.extend(mine);
        // In index order: the window lets the lowest go first.
        self.origin.make_contiguous().sort_by_key(|p| p.index);
    }
}

impl PieceRouter {
    /// Notes which members waited for grew since the last look (the view's copies),
    /// and until when none of them can be lost.
    fn watch_growth(&mut self, view: &impl CopyView, fleet: FleetMember, now: Instant) {
        let watch = &self.watch;
        let waited_for: BTreeSet<u32> = (self.waiting.iter())
            .map(|p| watch.owner.get(&p.index).copied().unwrap_or(p.index % fleet.members))
            .collect();
        self.watch.members = view.members_of(&waited_for);
        for job in &self.watch.members {
            let grown = self.watch.grown.entry(job.member).or_insert((0, now));
            // Growth, not a high-water mark: after a withdrawal, growth again counts.
            // A member waited for anew (it inherited pieces) is timed from now.
            if job.held > grown.0 || !self.watch.watched.contains(&job.member) {
                grown.1 = now;
            }
            grown.0 = job.held;
        }
        self.watch.watched = waited_for;
        let (grown, waited_for) = (&self.watch.grown, &self.watch.watched);
        let last = waited_for.iter().map(|m| grown.get(m).map_or(now, |g| g.1)).min();
        self.watch.calm_until = last.map(|at| at + FLEET_PATIENCE);
    }
}
