package seekmoe;

import com.google.gson.JsonObject;
import java.io.BufferedReader;
import java.io.IOException;
import java.io.InputStream;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.ArrayDeque;
import java.util.Iterator;
import java.util.NoSuchElementException;
import java.util.Spliterator;
import java.util.Spliterators;
import java.util.stream.Stream;
import java.util.stream.StreamSupport;

/**
 * The chunks of a server-sent event stream, read as they are asked for, until {@code data: [DONE]}. A stream that
 * ends before it was cut: ApiConnectionException. Closing it closes the connection, so the server stops writing.
 */
final class ChunkIterator implements Iterator<Chunk>, AutoCloseable {
    private final BufferedReader reader;
    private final String url;
    private final ArrayDeque<Chunk> ready = new ArrayDeque<>();
    private boolean done;
    private int events;

    ChunkIterator(InputStream body, String url) {
        this.reader = new BufferedReader(new InputStreamReader(body, StandardCharsets.UTF_8));
        this.url = url;
    }

    Stream<Chunk> stream() {
        Spliterator<Chunk> s = Spliterators.spliteratorUnknownSize(this, Spliterator.ORDERED | Spliterator.NONNULL);
        return StreamSupport.stream(s, false).onClose(this::close);
    }

    @Override
    public boolean hasNext() {
        while (ready.isEmpty() && !done) {
            String line = readLine();
            if (line == null) {
                close();
                throw new ApiConnectionException("the stream from " + url + " was cut after " + events()
                                                 + ", before data: [DONE]", null);
            }
            if (!line.startsWith("data:")) {
                continue;  // blank lines between events, comments, event names
            }
            String data = line.substring(5).strip();
            if (data.equals("[DONE]")) {
                close();
                break;
            }
            events++;
            JsonObject event = Json.object(data, "an event of " + url);
            try {
                ready.addAll(Json.chunks(event));
            } catch (RuntimeException e) {
                close();
                throw e;
            }
        }
        return !ready.isEmpty();
    }

    @Override
    public Chunk next() {
        if (!hasNext()) {
            throw new NoSuchElementException("the stream has ended");
        }
        return ready.poll();
    }

    private String readLine() {
        try {
            return reader.readLine();
        } catch (IOException e) {
            close();
            throw new ApiConnectionException("the stream from " + url + " was cut after " + events()
                                             + ": the connection dropped (" + e.getMessage() + ")", e);
        }
    }

    private String events() {
        return events + (events == 1 ? " event" : " events");
    }

    @Override
    public void close() {
        done = true;
        try {
            reader.close();
        } catch (IOException e) {
            // the connection is gone either way: nothing more to read, nothing to tell the caller
        }
    }
}
