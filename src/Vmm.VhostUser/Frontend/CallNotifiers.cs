using Vmm.Core.Events;

namespace Vmm.VhostUser.Frontend;

/// <summary>
/// Watches <paramref name="eventFd"/> and calls <paramref name="onSignalled"/> with the count it
/// read each time it was signalled; disposing the result ends the watch, after which the callback
/// never runs again. <see cref="EventNotifierLoop.Watch"/> is one: the VM's notifier loop, one
/// epoll thread for every proxied queue of every device.
/// </summary>
public delegate IDisposable WatchCallNotifier(EventFd eventFd, Action<ulong> onSignalled);
